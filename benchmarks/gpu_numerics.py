"""What fp32 Gram accumulation (the GPU's exact path) does to the figures, measured on CPU.

On CUDA the exact path accumulates the Grams of dW, W0 and W1 in float32 (DESIGN.md
contract 2; ``paramgeom.linalg._ops.gram``), where the CPU accumulates in float64. This
script forms the same Grams in float32 on the CPU (difference and products in fp32, fp32
sums: torch's fp32 GEMM, as the GPU kernel's fp32 accumulators) and in float64, takes the
eigendecomposition of each in float64 as the engine does, and reports the error of every
figure against the float64 oracle (float64 SVD of the float64 difference and weights):
stable rank, effective rank, spectral drift and the principal angles of the top-K right
subspaces. Usage: ``python benchmarks/gpu_numerics.py [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from paramgeom import linalg, metrics


def _pair(kind: str, m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w0 = 0.02 * torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind == "low-rank update":  # a trained-like update: rank 8 over rounding noise
        u = torch.randn(m, 8, generator=g, dtype=torch.float64)
        v = torch.randn(8, n, generator=g, dtype=torch.float64)
        w1 = w0 + 2e-3 * (u @ v) / math.sqrt(n)
    elif kind == "tiny update":  # dW mostly bf16 rounding: the hardest spectrum
        w1 = w0 * (1 + 1e-3 * torch.randn(m, n, generator=g, dtype=torch.float64))
    else:  # "gapless": a full-rank Gaussian update
        w1 = w0 + 2e-3 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return w0.to(torch.bfloat16), w1.to(torch.bfloat16)


def _gram(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    x = x.to(acc)
    return (x.T @ x).double()


def _figures(g_d, g_0, g_1, k: int) -> dict[str, float]:
    s = torch.linalg.eigvalsh(0.5 * (g_d + g_d.T)).flip(0).clamp_min(0).sqrt()
    e0, v0 = torch.linalg.eigh(0.5 * (g_0 + g_0.T))
    e1, v1 = torch.linalg.eigh(0.5 * (g_1 + g_1.T))
    right = linalg.principal_angles(v0.flip(1)[:, :k], v1.flip(1)[:, :k])
    s0 = e0.flip(0)[:k].clamp_min(0).sqrt()
    s1 = e1.flip(0)[:k].clamp_min(0).sqrt()
    return {
        "stable_rank": metrics.stable_rank(s),
        "effective_rank": metrics.effective_rank(s),
        "spectral_drift": metrics.spectral_drift(s0, s1),
        "angle_max_deg": right.max_deg,
        "angle_mean_deg": right.mean_deg,
    }


def _oracle(w0, w1, k: int) -> dict[str, float]:
    a, b = w0.double(), w1.double()
    s = torch.linalg.svdvals(b - a)
    _, s0, v0 = torch.linalg.svd(a, full_matrices=False)
    _, s1, v1 = torch.linalg.svd(b, full_matrices=False)
    right = linalg.principal_angles(v0[:k].T, v1[:k].T)
    return {
        "stable_rank": metrics.stable_rank(s),
        "effective_rank": metrics.effective_rank(s),
        "spectral_drift": metrics.spectral_drift(s0[:k], s1[:k]),
        "angle_max_deg": right.max_deg,
        "angle_mean_deg": right.mean_deg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--shapes", nargs="+", default=["1024x1024", "2048x512", "4096x1024"])
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        m, n = map(int, shape.split("x"))
        k = max(1, min(m, n) // 8)  # the paper's 512 of 4096
        for kind in ("low-rank update", "gapless", "tiny update"):
            w0, w1 = _pair(kind, m, n, seed=0)
            d = w1.float() - w0.float()  # exact in fp32 for bf16 inputs of these ranges
            want = _oracle(w0, w1, k)
            for acc in (torch.float64, torch.float32):
                got = _figures(_gram(d, acc), _gram(w0, acc), _gram(w1, acc), k)
                row = {"shape": shape, "K": k, "case": kind, "accumulate": str(acc)[6:]}
                for key, value in got.items():
                    err = abs(value - want[key])
                    row[key] = value
                    row[f"{key}_err"] = err if "angle" in key else err / abs(want[key])
                rows.append(row)
    cols = ("stable_rank", "effective_rank", "spectral_drift", "angle_max_deg", "angle_mean_deg")
    print("| shape | K | case | accumulate | " + " | ".join(f"{c} err" for c in cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for r in rows:
        errs = " | ".join(f"{r[c + '_err']:.1e}" for c in cols)
        print(f"| {r['shape']} | {r['K']} | {r['case']} | {r['accumulate']} | {errs} |")
    print("(relative error for ranks and drift; absolute degrees for angles; oracle: float64 SVD)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
