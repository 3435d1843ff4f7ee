#!/usr/bin/env python3
"""Runs a benchmark command several times and prints its Markdown tables
with every varying number replaced by its median over the runs and its range.

    scripts/bench-medians.py --runs 5 -- cargo bench -p gllm-kernels --bench quant
    scripts/bench-medians.py --logs DIR            # aggregate saved outputs

A single run on a shared 2-core VM moves by ±10 % and more, so the tables in
README.md and docs/ are medians of whole runs: each run is a separate process
(its own JIT, page placement and worker pool), which is what "stable across
runs" means. Rows are matched by their position in each table; the cells that
are the same in every run (format, shape, …) must agree, or the script stops.
A varying cell keeps its text with each number that varies replaced by its
median and range: `20.9 [19.5–22.0] (95 [88–107]%)` for a "GB/s (% of
probe)" cell, `2.4 [2.1–2.9]` for a time.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def tables(text):
    """The Markdown tables of one run's output: lists of rows of cells."""
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def merge_cell(cells):
    """One table cell over the runs: as is when every run agrees, else each
    number that varies replaced by its median and its range."""
    if all(c == cells[0] for c in cells):
        return cells[0]
    shapes = [NUMBER.sub("#", c) for c in cells]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"cells differ in shape across runs: {cells}")
    texts = [NUMBER.findall(c) for c in cells]
    merged = []
    for column in zip(*texts):
        if all(n == column[0] for n in column):
            merged.append(column[0])
            continue
        places = max(len(n.split(".")[1]) if "." in n else 0 for n in column)
        values = [float(n) for n in column]
        median = statistics.median(values)
        merged.append(f"{median:.{places}f} [{min(values):.{places}f}–{max(values):.{places}f}]")
    parts = iter(merged)
    return NUMBER.sub(lambda _: next(parts), cells[0])


def merge(outputs):
    runs = [tables(o) for o in outputs]
    if any(len(r) != len(runs[0]) for r in runs):
        raise ValueError("the runs printed different numbers of tables")
    merged = []
    for t, table in enumerate(runs[0]):
        rows = [r[t] for r in runs]
        if any(len(r) != len(table) for r in rows):
            raise ValueError(f"table {t + 1} has different row counts across runs")
        out = []
        for i, row in enumerate(table):
            versions = [r[i] for r in rows]
            if any(len(v) != len(row) for v in versions):
                raise ValueError(f"table {t + 1}, row {i + 1}: different cell counts across runs")
            out.append([merge_cell([v[c] for v in versions]) for c in range(len(row))])
        merged.append(out)
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the command (default 5)")
    parser.add_argument("--logs", help="a directory: aggregate its *.log files instead of running anything")
    parser.add_argument("--save", help="a directory to keep each run's output in (run-N.log)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.logs:
        names = sorted(n for n in os.listdir(args.logs) if n.endswith(".log"))
        outputs = [open(os.path.join(args.logs, n), encoding="utf-8").read() for n in names]
    elif command:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        outputs = []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: {' '.join(command)}", file=sys.stderr, flush=True)
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            if done.returncode != 0:
                sys.exit(f"run {run + 1} failed with exit status {done.returncode}")
            outputs.append(done.stdout)
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                with open(os.path.join(args.save, f"run-{run + 1}.log"), "w", encoding="utf-8") as f:
                    f.write(done.stdout)
    else:
        parser.error("give a command after -- or --logs DIR")
    if not outputs:
        sys.exit("no runs to aggregate")
    try:
        merged = merge(outputs)
    except ValueError as e:
        sys.exit(f"cannot aggregate: {e}")
    print(f"Medians of {len(outputs)} runs, [lowest–highest] after each number that varied.\n")
    for table in merged:
        for row in table:
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
