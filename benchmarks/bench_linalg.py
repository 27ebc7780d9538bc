"""Benchmarks of paramgeom.linalg against the plain-torch ways of getting the same answers.

Two comparisons, each a same-run ratio at stated accuracy (float64 oracle, untimed):

* ``randomized_svd`` of the implicit difference (fused ``diff_matmul`` passes, no
  ``w1 - w0`` temporary) vs materialising ``w1.float() - w0.float()`` and calling
  ``torch.svd_lowrank`` with the same rank, oversampling and power iterations (the exact
  Gram path of ``randomized_svd`` is listed too);
* ``top_subspaces`` of W1 warm-started from W0's subspace vs a cold ``torch.linalg.svd`` of
  W1 and a cold ``torch.svd_lowrank`` of W1 (the second of the "two cold SVDs").

Memory, by construction: ``randomized_svd`` allocates only ``(m + n) x (k + p)`` float64
bases and the kernels' per-tile fp32 differences; the baseline allocates the full ``m x n``
fp32 difference (16 MiB at 2048x2048) on top of the inputs.

``python benchmarks/bench_linalg.py --shapes 2048x2048 4096x1024 --dtypes bf16 --reps 5``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from harness import machine, quantile, time_interleaved

from paramgeom.linalg import randomized_svd, top_subspaces

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
K, OVERSAMPLE, POWER_ITERS = 16, 10, 2


def make_pair(m: int, n: int, dtype: torch.dtype, seed: int = 0, device="cpu"):
    """Weight-like W0 (0.02 N(0,1) bulk plus a rank-64 principal part with singular values
    ~ 1/i above the bulk edge) and W1 = W0 + a rank-16 update with geometric singular values
    (~1e-2 of ||W0||) + 1e-5 noise, built in row blocks (small temporaries)."""
    g = torch.Generator().manual_seed(seed)
    r, r0 = 16, 64
    u = torch.linalg.qr(torch.randn(m, r, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=g)).Q
    s = 0.02 * (m * n) ** 0.5 * 1e-2 * 0.8 ** torch.arange(r, dtype=torch.float32)
    u0 = torch.linalg.qr(torch.randn(m, r0, generator=g)).Q
    v0 = torch.linalg.qr(torch.randn(n, r0, generator=g)).Q
    edge = 0.02 * (m**0.5 + n**0.5)
    s0 = 20 * edge / torch.arange(1, r0 + 1, dtype=torch.float32)
    w0 = torch.empty(m, n, dtype=dtype)
    w1 = torch.empty(m, n, dtype=dtype)
    for i in range(0, m, 256):
        blk = 0.02 * torch.randn(min(256, m - i), n, generator=g) + (u0[i : i + 256] * s0) @ v0.T
        w0[i : i + 256] = blk.to(dtype)
        upd = (u[i : i + 256] * s) @ v.T + 1e-5 * torch.randn(blk.shape, generator=g)
        w1[i : i + 256] = (blk + upd).to(dtype)
    return w0.to(device), w1.to(device)


def oracle(w: torch.Tensor, k: int):
    """Float64 top-k (U, S, V) of a (materialised, untimed) matrix."""
    u, s, vh = torch.linalg.svd(w.double().cpu(), full_matrices=False)
    return u[:, :k], s[:k], vh[:k].T


def max_sine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float(torch.linalg.matrix_norm(b - a @ (a.T @ b), ord=2))


def s_err(s: torch.Tensor, so: torch.Tensor) -> float:
    return float(((s.double().cpu() - so) / so).abs().max())


def materialise_svd_lowrank(w0, w1, k=K):
    d = w1.float() - w0.float()
    u, s, v = torch.svd_lowrank(d, q=k + OVERSAMPLE, niter=POWER_ITERS)
    return u[:, :k], s[:k], v[:, :k].T


def svd_providers(w0, w1):
    provs = {
        "paramgeom.randomized_svd": lambda: randomized_svd(
            w0, w1, K, OVERSAMPLE, POWER_ITERS, seed=0, exact_threshold=0
        ),
        "paramgeom.randomized_svd(exact Gram)": lambda: randomized_svd(w0, w1, K),
        "materialise+torch.svd_lowrank": lambda: materialise_svd_lowrank(w0, w1),
    }
    if min(w0.shape) > 4096:  # randomized_svd's default takes the randomized path there
        del provs["paramgeom.randomized_svd(exact Gram)"]
    return provs


def subspace_providers(w1, v0):
    return {
        "paramgeom.top_subspaces(warm)": lambda: tuple(top_subspaces(w1, K, init=v0, tol=1e-5)),
        "torch.linalg.svd(cold)": lambda: _full_svd(w1),
        "torch.svd_lowrank(cold,niter=4)": lambda: _lowrank(w1),
    }


def _full_svd(w):
    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    return u[:, :K], s[:K], vh[:K].T


def _lowrank(w):
    u, s, v = torch.svd_lowrank(w.float(), q=K + OVERSAMPLE, niter=4)
    return u[:, :K], s[:K], v[:, :K]


@dataclass
class Row:
    case: str
    shape: str
    dtype: str
    provider: str
    p50_ms: float
    p20_ms: float
    p80_ms: float
    s_rel_err: float
    v_sine: float
    speedup_vs_baseline: float


def sweep(shapes, dtypes, reps, device, cases=("svd", "topk")) -> list[Row]:
    rows: list[Row] = []
    for m, n in shapes:
        for dname in dtypes:
            w0, w1 = make_pair(m, n, DTYPES[dname], device=device)
            if "svd" in cases:
                _, so_d, vo_d = oracle(w1.double() - w0.double(), K)
                rows += _case(
                    "svd(dW)", m, n, dname, svd_providers(w0, w1), so_d, vo_d,
                    "materialise+torch.svd_lowrank", reps, device, vh=True,
                )  # fmt: skip
            if "topk" not in cases:
                continue
            v0 = top_subspaces(w0, K + OVERSAMPLE).V  # W0's subspace, computed once, untimed
            _, so1, vo1 = oracle(w1, K)
            rows += _case(
                "top-k(W1)", m, n, dname, subspace_providers(w1, v0), so1, vo1,
                "torch.linalg.svd(cold)", reps, device, vh=False,
            )  # fmt: skip
    return rows


def _case(case, m, n, dname, provs, so, vo, base, reps, device, vh) -> list[Row]:
    errs = {}
    for name, fn in provs.items():  # accuracy of every provider, checked on every run
        _, s, v = fn()
        v = v.T if vh else v
        errs[name] = (s_err(s, so), max_sine(v, vo))
    times = time_interleaved(provs, reps, device)
    b50 = statistics.median(times[base])
    out = []
    for name, ts in times.items():
        p50 = statistics.median(ts)
        p20, p80 = quantile(ts, 0.2), quantile(ts, 0.8)
        out.append(
            Row(case, f"{m}x{n}", dname, name, 1e3 * p50, 1e3 * p20, 1e3 * p80,
                errs[name][0], errs[name][1], b50 / p50)
        )  # fmt: skip
    return out


def markdown(rows: list[Row]) -> str:
    head = (
        "| case | shape | dtype | provider | p50 ms | p20-p80 ms | max rel err S | "
        "sin(V) | x baseline |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.shape} | {r.dtype} | {r.provider} | {r.p50_ms:.1f} | "
            f"{r.p20_ms:.1f}-{r.p80_ms:.1f} | {r.s_rel_err:.1e} | {r.v_sine:.1e} | "
            f"{r.speedup_vs_baseline:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["2048x2048", "4096x1024"])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--cases", nargs="+", choices=["svd", "topk"], default=["svd", "topk"],
        help="svd: randomized_svd of dW; topk: warm-started top_subspaces of W1",
    )  # fmt: skip
    a = p.parse_args(argv)
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in a.shapes]
    info = machine()
    print(f"# {info}", file=sys.stderr)
    rows = sweep(shapes, a.dtypes, a.reps, a.device, tuple(a.cases))
    print(markdown(rows))
    if a.json:
        a.json.write_text(
            json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
