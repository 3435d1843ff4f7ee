#!/usr/bin/env python3
"""Compares two logits arrays (.npy, shape [n_positions, vocab] or [vocab]).

    python3 tools/compare_logits.py A.npy B.npy [--tol 1e-2] [--rel-floor 1.0]

Prints, per position and overall: the max absolute difference, the max
relative difference |a - b| / max(|a|, |b|, rel_floor) (the floor keeps logits
near zero from dominating), and whether the argmax agrees (with the top-2
margin of A, to tell a real disagreement from a near tie). Exits 1 when the
max absolute difference exceeds --tol, 2 when the shapes differ, else 0.
Only numpy is needed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-2, help="max allowed absolute difference (default 1e-2)")
    ap.add_argument("--rel-floor", type=float, default=1.0, help="denominator floor of the relative difference")
    ap.add_argument("--quiet", action="store_true", help="only the summary line")
    args = ap.parse_args(argv)

    a = np.load(args.a).astype(np.float64)
    b = np.load(args.b).astype(np.float64)
    a = a.reshape(1, -1) if a.ndim == 1 else a
    b = b.reshape(1, -1) if b.ndim == 1 else b
    if a.shape != b.shape:
        print(f"shape mismatch: {args.a} {a.shape} vs {args.b} {b.shape}")
        return 2
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        print("non-finite values present")
        return 1

    diff = np.abs(a - b)
    rel = diff / np.maximum(np.maximum(np.abs(a), np.abs(b)), args.rel_floor)
    am, bm = a.argmax(axis=1), b.argmax(axis=1)
    top2 = np.sort(a, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]

    if not args.quiet:
        print(f"{'pos':>5} {'max_abs':>10} {'max_rel':>10} {'argmax A':>9} {'argmax B':>9} {'margin A':>9}")
        for i in range(a.shape[0]):
            flag = "" if am[i] == bm[i] else "  <-- argmax differs"
            print(f"{i:5d} {diff[i].max():10.3e} {rel[i].max():10.3e} {am[i]:9d} {bm[i]:9d} {margin[i]:9.3f}{flag}")
    agree = int((am == bm).sum())
    max_abs = float(diff.max())
    print(
        f"positions {a.shape[0]}, vocab {a.shape[1]}: max abs diff {max_abs:.3e}, "
        f"max rel diff {float(rel.max()):.3e}, mean abs diff {float(diff.mean()):.3e}, "
        f"argmax agreement {agree}/{a.shape[0]}, tol {args.tol:g}: {'OK' if max_abs <= args.tol else 'FAIL'}"
    )
    return 0 if max_abs <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
