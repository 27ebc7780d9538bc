"""Rates of the exact spectral path's parts on this CPU: what bounds ``paramgeom diff``.

Per ``n x n`` Gaussian bf16 pair (a 5% update), one thread, best of ``--repeats``:

- the float64 Gram of ``dW = W1 - W0`` (``linalg._ops.gram``: BLAS ``syrk``, the
  subtraction included), rated at its ``m n^2`` flops;
- a float32 Gram by torch's GEMM (``W^T W``), rated at ``2 m n^2``;
- the float32 window (``linalg.eigen.top_window``: LAPACK's ``ssyevr`` for the top ``n / 8
  + 16`` pairs), rated at the ``4/3 n^3`` flops of its tridiagonal reduction;
- that reduction alone (LAPACK's blocked ``ssytrd`` through SciPy, the same Gram): the
  share of the window that the other parts of ``ssyevr`` cannot change;
- dW's eigenvalues (``linalg.eigen.eigenvalues_desc``), rated the same way.

``python benchmarks/exact_parts.py --sizes 1024 2048`` (prints a Markdown table; ``--json``
also writes the rows). The command line runs OpenBLAS on one thread; set
``OPENBLAS_NUM_THREADS=1`` here for the same figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.linalg import lapack

from paramgeom.linalg import _ops
from paramgeom.linalg.eigen import FLOAT32_MARGIN, eigenvalues_desc, top_window


def best(fn: Callable[[], object], repeats: int) -> float:
    """Least wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rates(n: int, repeats: int) -> list[dict]:
    """One row per part for an ``n x n`` pair: seconds and GFLOP/s."""
    g = torch.Generator().manual_seed(n)
    w0 = torch.randn(n, n, generator=g).bfloat16()
    w1 = (w0.float() + 0.05 * torch.randn(n, n, generator=g)).bfloat16()
    gram64 = _ops.gram(w0, w1, "right")
    w32 = w0.float()
    gram32 = w32.T @ w32
    width = n // 8 + FLOAT32_MARGIN
    reduction = 4 / 3 * n**3
    # Lower triangle, column-major: what LAPACK reads; the workspace lets ssytrd block.
    gram32_f = np.asfortranarray(gram32.numpy())
    parts = [
        ("float64 Gram of dW (syrk)", n**3, lambda: _ops.gram(w0, w1, "right")),
        ("float32 Gram (GEMM)", 2 * n**3, lambda: w32.T @ w32),
        (
            f"float32 window, top {width} (ssyevr)",
            reduction,
            lambda: top_window(gram32.clone(), width, symmetric=True, overwrite=True),
        ),
        (
            "its tridiagonal reduction alone (ssytrd)",
            reduction,
            lambda: lapack.ssytrd(gram32_f, lower=1, lwork=64 * n),
        ),
        ("dW's eigenvalues", reduction, lambda: eigenvalues_desc(gram64, symmetric=True)),
    ]
    rows = []
    for name, flops, fn in parts:
        seconds = best(fn, repeats)
        rows.append({"n": n, "part": name, "seconds": seconds, "gflops": flops / seconds / 1e9})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [r for n in args.sizes for r in rates(n, args.repeats)]
    print("| n | part | s | GFLOP/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['part']} | {r['seconds']:.3f} | {r['gflops']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
