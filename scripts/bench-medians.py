#!/usr/bin/env python3
"""Runs a benchmark command several times and prints its Markdown tables
with every varying number replaced by its median over the runs and its range.

    scripts/bench-medians.py --runs 5 -- cargo bench -p gllm-kernels --bench quant
    scripts/bench-medians.py --logs DIR            # aggregate saved outputs
    scripts/bench-medians.py --self-test           # checks the merge (scripts/test.sh)

A single run on a shared 2-core VM moves by ±10 % and more, so the tables in
README.md and docs/ are medians of whole runs: each run is a separate process
(its own JIT, page placement and worker pool), which is what "stable across
runs" means. Rows are matched by their position in each table; the cells
that are labels (a row's first cell, any cell not starting with a number)
must agree in every run, or the script stops.
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
# A cell that may vary: it starts with a number ("20.4 (93%)", "0.84×").
# Anything else ("Q8_0", "avx2") and a row's first cell are labels, which
# every run must print alike.
MEASUREMENT = re.compile(r"\s*-?\d")


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
    if not all(MEASUREMENT.match(c) for c in cells):
        raise ValueError(f"a label differs across runs: {cells}")
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
            if any(v[0] != row[0] for v in versions):
                raise ValueError(f"table {t + 1}, row {i + 1}: the runs disagree on the row: {[v[0] for v in versions]}")
            out.append([merge_cell([v[c] for v in versions]) for c in range(len(row))])
        merged.append(out)
    return merged


def self_test():
    """Checks the merge on made-up runs (scripts/test.sh runs this)."""
    run = "intro {}\n\n| format | GB/s (% of probe) | µs |\n|---|---|---|\n| Q4_1 | {} | 2.5 |\n| Q8_0 | 7.0 (70%) | {} |\ntail\n"
    outputs = [
        run.format(1, "20.0 (90%)", "1.0"),
        run.format(2, "22.0 (95%)", "3.0"),
        run.format(3, "21.0 (80%)", "2.0"),
    ]
    got = merge(outputs)
    want = [
        [
            ["format", "GB/s (% of probe)", "µs"],
            ["---", "---", "---"],
            ["Q4_1", "21.0 [20.0–22.0] (90 [80–95]%)", "2.5"],
            ["Q8_0", "7.0 (70%)", "2.0 [1.0–3.0]"],
        ]
    ]
    assert got == want, f"merged tables:\n{got}\nwanted:\n{want}"
    for bad in [run.format(1, "n/a", "1.0"), run.replace("| Q8_0", "| Q4_0").format(1, "20.0 (90%)", "1.0")]:
        try:
            merge([outputs[0], bad])
        except ValueError:
            continue
        raise AssertionError(f"runs that differ in a fixed cell were merged:\n{bad}")
    print("bench-medians self-test: ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
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
