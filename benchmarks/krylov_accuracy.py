"""The block Krylov method on its own (no exact Gram finish) against the float64 oracle, on
sampled matrices of a checkpoint pair.

For each matrix, as ``paramgeom diff``'s randomized path does at K: dW's top-K values
(Gaussian start of K + 10 columns), W0's top-(K + 10) subspaces (cold, K + 20 columns) and
W1's top-K (seeded with W0's basis), each by
:func:`paramgeom.linalg.krylov.block_krylov_svd` with ``exact_fraction=1`` (Krylov until the
residual test passes or a block no longer fits) and the default stop test (relative Ritz
residual 1e-6). Printed as JSON: steps, basis width, residual, seconds, and the errors
against full float64 SVDs (angles between our and the oracle's top-K subspaces in degrees;
the rotation figures' errors; relative errors of dW's top-K values).

Run: ``python benchmarks/krylov_accuracy.py BASE TUNED [--k 64] [--names N ...]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from oracle import Reader  # noqa: E402

from paramgeom.linalg import principal_angles  # noqa: E402
from paramgeom.linalg.krylov import RESIDUAL_TOL, block_krylov_svd  # noqa: E402

DEFAULT_NAMES = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.4.mlp.gate_proj.weight",
    "model.layers.8.mlp.down_proj.weight",
)


def gaussian(n: int, b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, b, generator=g, dtype=torch.float64)


def solve(w0, w1, k, start):
    t = time.perf_counter()
    r = block_krylov_svd(w0, w1, k, start, 30, RESIDUAL_TOL, exact_fraction=1.0)
    return r, time.perf_counter() - t


def deg(a, b) -> float:
    return principal_angles(a, b).max_deg


def measure(w0: torch.Tensor, w1: torch.Tensor, k: int) -> dict:
    n = w0.shape[1]
    d, td = solve(w0, w1, k, gaussian(n, k + 10))
    r0, t0 = solve(None, w0, k + 10, gaussian(n, k + 20))
    r1, t1 = solve(None, w1, k, r0.V)
    u0, s0, v0h = torch.linalg.svd(w0.double(), full_matrices=False)
    u1, s1, v1h = torch.linalg.svd(w1.double(), full_matrices=False)
    sd = torch.linalg.svdvals(w1.double() - w0.double())[:k]
    v0, v1 = v0h[:k].T, v1h[:k].T
    rot_err = max(
        abs(deg(r0.U[:, :k], r1.U) - deg(u0[:, :k], u1[:, :k])),
        abs(deg(r0.V[:, :k], r1.V) - deg(v0, v1)),
    )
    return {
        "shape": list(w0.shape),
        "gap_w0": float(s0[k - 1] / s0[k]),
        "gap_w1": float(s1[k - 1] / s1[k]),
        "runs": {
            name: {
                "steps": r.steps,
                "dim": r.dim,
                "residual": r.residual,
                "exact": r.exact,
                "seconds": round(t, 3),
            }
            for name, r, t in (("dW", d, td), ("W0", r0, t0), ("W1", r1, t1))
        },  # fmt: skip
        "dW_values_rel": float(((d.S - sd).abs() / sd).max()),
        "W0_subspace_deg": max(deg(r0.U[:, :k], u0[:, :k]), deg(r0.V[:, :k], v0)),
        "W1_subspace_deg": max(deg(r1.U, u1[:, :k]), deg(r1.V, v1)),
        "rotation_max_deg_err": rot_err,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--names", nargs="*", default=list(DEFAULT_NAMES))
    args = p.parse_args(argv)
    rb, rt = Reader(args.base), Reader(args.tuned)
    out = {name: measure(rb.torch(name), rt.torch(name), args.k) for name in args.names}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
