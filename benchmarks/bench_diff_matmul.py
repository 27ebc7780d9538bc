"""Benchmarks of paramgeom.diff_matmul and paramgeom.gram_update against the plain-torch
ways of getting the same numbers, and against the GEMM alone measured in the same run.

Two entry points over the same cases:

* pytest-benchmark: ``python -m pytest benchmarks/bench_diff_matmul.py --benchmark-enable``
* a sweep that prints a Markdown table of medians, GB/s, GFLOP/s and same-run ratios and
  writes the rows to JSON: ``python benchmarks/bench_diff_matmul.py --shapes 4096x14336``

diff_matmul providers, for ``(w1 - w0) @ x`` with w (m, n) bf16 and x (n, k) fp32:
``paramgeom`` (fused), ``torch_materialise`` (``(w1.float() - w0.float()) @ x``, what
scripts write), ``gemm_only`` (``D @ x`` on a difference materialised in fp32 before the
clock starts: the GEMM alone, the floor a fused kernel aims at) and the same three with
``transpose``. Bytes counted: both weights once plus x and out (fp32); FLOPs: 2 m n k.
gram_update providers, for ``G += (x - x0)^T (x - x0)`` with x (r, n): ``paramgeom`` and
``torch_materialise`` (``G.addmm_(d.T, d)`` with ``d = x.double() - x0.double()``); their
FLOPs are counted as r n (n + 1), the work a symmetric Gram needs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
from harness import machine, quantile, time_interleaved

from paramgeom.api.diff_matmul import diff_matmul
from paramgeom.api.gram_update import gram_update

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_weights(m: int, n: int, dtype: torch.dtype, seed: int = 0, device="cpu"):
    """A base matrix and a tuned copy nudged by ~1%."""
    g = torch.Generator().manual_seed(seed)
    w0 = 0.02 * torch.randn(m, n, generator=g)
    w1 = w0 * (1 + 0.01 * torch.randn(m, n, generator=g))
    return w0.to(dtype).to(device), w1.to(dtype).to(device)


def materialise(w0, w1, x, transpose=False):
    """What analysis scripts write today: the whole fp32 difference, then the GEMM."""
    d = w1.float() - w0.float()
    return (d.T if transpose else d) @ x


def dm_providers(w0, w1, x, xt, backend: str):
    d = w1.float() - w0.float()  # materialised outside the clock, for the GEMM alone
    return d, {
        "paramgeom": lambda: diff_matmul(w0, w1, x, backend=backend),
        "torch_materialise": lambda: materialise(w0, w1, x),
        "gemm_only": lambda: d @ x,
        "paramgeom_T": lambda: diff_matmul(w0, w1, xt, transpose=True, backend=backend),
        "torch_materialise_T": lambda: materialise(w0, w1, xt, transpose=True),
        "gemm_only_T": lambda: d.T @ xt,
    }


def check_dm(w0, w1, x, xt, backend: str) -> None:
    """A fast wrong answer is not a result: agree with float64 to the contract's 1e-5."""
    for transpose, xx in ((False, x), (True, xt)):
        got = diff_matmul(w0, w1, xx, transpose=transpose, backend=backend).double()
        d = w1.double() - w0.double()
        want = (d.T if transpose else d) @ xx.double()
        err = float((got - want).norm() / want.norm())
        assert err <= 1e-5, f"diff_matmul relative error {err:.3g} (transpose={transpose})"


def gram_materialise(G, x, x0):
    d = x.double() - x0.double()
    return G.addmm_(d.T, d)


# ---------------------------------------------------------------------------------------
# pytest-benchmark suite

SHAPES_PYTEST = [(1024, 4096), (4096, 14336)]


@pytest.fixture(scope="module", params=SHAPES_PYTEST, ids=lambda s: f"{s[0]}x{s[1]}")
def dm_case(request):
    m, n = request.param
    w0, w1 = make_weights(m, n, torch.bfloat16)
    x, xt = torch.randn(n, 64), torch.randn(m, 64)
    check_dm(w0, w1, x, xt, "auto")
    return w0, w1, x, xt


@pytest.mark.parametrize(
    "provider",
    [
        "paramgeom",
        "torch_materialise",
        "gemm_only",
        "paramgeom_T",
        "torch_materialise_T",
        "gemm_only_T",
    ],
)
def test_diff_matmul(benchmark, dm_case, provider):
    w0, w1, x, xt = dm_case
    _, fns = dm_providers(w0, w1, x, xt, "auto")
    m, n = w0.shape
    benchmark.extra_info["flop"] = 2 * m * n * x.shape[1]
    benchmark.pedantic(fns[provider], rounds=5, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("provider", ["paramgeom", "torch_materialise"])
def test_gram_update(benchmark, provider):
    x = torch.randn(4096, 1024).to(torch.bfloat16)
    x0 = torch.randn(4096, 1024).to(torch.bfloat16)
    G = torch.zeros(1024, 1024, dtype=torch.float64)
    fn = {
        "paramgeom": lambda: gram_update(G, x, x0),
        "torch_materialise": lambda: gram_materialise(G, x, x0),
    }[provider]
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)


# ---------------------------------------------------------------------------------------
# sweep with same-run ratios


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    provider: str
    p20_ms: float
    p50_ms: float
    p80_ms: float
    gbps: float
    gflops: float
    ratios: dict


def _rows(op, shape, dtype, times, nbytes, flop, ratio_of) -> list[Row]:
    med = {k: statistics.median(v) for k, v in times.items()}
    out = []
    for k, v in times.items():
        out.append(
            Row(
                op=op,
                shape=shape,
                dtype=dtype,
                provider=k,
                p20_ms=quantile(v, 0.2) * 1e3,
                p50_ms=med[k] * 1e3,
                p80_ms=quantile(v, 0.8) * 1e3,
                gbps=nbytes[k] / med[k] / 1e9,
                gflops=flop / med[k] / 1e9,
                ratios=ratio_of(k, med),
            )
        )
    return out


def sweep_diff_matmul(shapes, dtypes, k, reps, backend, device) -> list[Row]:
    rows = []
    for d in dtypes:
        for m, n in shapes:
            w0, w1 = make_weights(m, n, DTYPES[d], device=device)
            x = torch.randn(n, k, device=device)
            xt = torch.randn(m, k, device=device)
            check_dm(w0, w1, x, xt, backend)
            dmat, fns = dm_providers(w0, w1, x, xt, backend)
            times = time_interleaved(fns, reps, device)
            io = 4 * k * (m + n)  # x and out, fp32
            w_bytes = 2 * m * n * w0.element_size()
            nbytes = {key: w_bytes + io for key in fns}
            for key in ("gemm_only", "gemm_only_T"):
                nbytes[key] = 4 * m * n + io  # the fp32 difference instead of two weights

            def ratio_of(key, med):
                if not key.startswith("paramgeom"):
                    return {}
                t = "_T" if key.endswith("_T") else ""
                return {
                    f"speed-up vs torch_materialise{t}": med[f"torch_materialise{t}"] / med[key],
                    f"time / gemm_only{t}": med[key] / med[f"gemm_only{t}"],
                }

            rows += _rows(
                "diff_matmul", f"{m}x{n}, k={k}", d, times, nbytes, 2 * m * n * k, ratio_of
            )
            del w0, w1, dmat
    return rows


def sweep_gram(shapes, dtypes, reps, backend, device) -> list[Row]:
    rows = []
    acc = torch.float64 if device == "cpu" else torch.float32
    for d in dtypes:
        for r, n in shapes:
            x, x0 = make_weights(r, n, DTYPES[d], seed=1, device=device)
            G = torch.zeros(n, n, dtype=acc, device=device)
            G64 = torch.zeros(n, n, dtype=torch.float64, device=device)
            fns = {
                "paramgeom": lambda G=G, x=x, x0=x0: gram_update(G, x, x0, backend=backend),
                "torch_materialise": lambda G=G64, x=x, x0=x0: gram_materialise(G, x, x0),
            }
            times = time_interleaved(fns, reps, device)
            nb = 2 * r * n * x.element_size() + 2 * n * n * G.element_size()
            rows += _rows(
                "gram_update",
                f"{r}x{n}",
                d,
                times,
                {k: nb for k in fns},
                r * n * (n + 1),  # the symmetric Gram's work (SYRK); a full product is 2 r n^2
                lambda key, med: (
                    {"speed-up vs torch_materialise": med["torch_materialise"] / med[key]}
                    if key == "paramgeom"
                    else {}
                ),
            )
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| op | shape | dtype | provider | p50 ms (p20-p80) | GB/s | GFLOP/s | ratios |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r.ratios.items())
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.provider} "
            f"| {r.p50_ms:.1f} ({r.p20_ms:.1f}-{r.p80_ms:.1f}) "
            f"| {r.gbps:.1f} | {r.gflops:.1f} | {ratios} |"
        )
    return "\n".join(lines)


def _shape(s: str) -> tuple[int, int]:
    a, b = s.lower().split("x")
    return int(a), int(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", type=_shape, default=[(4096, 14336)])
    p.add_argument("--k", type=int, default=64, help="columns of x")
    p.add_argument("--gram-shapes", nargs="*", type=_shape, default=[(4096, 1024)])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", type=Path, default=None, help="write rows and machine info here")
    args = p.parse_args(argv)
    rows = sweep_diff_matmul(args.shapes, args.dtypes, args.k, args.reps, args.backend, args.device)
    rows += sweep_gram(args.gram_shapes, args.dtypes, args.reps, args.backend, args.device)
    print(json.dumps(machine()))
    print(f"backend={args.backend} device={args.device}")
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine(), "rows": [asdict(r) for r in rows]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
