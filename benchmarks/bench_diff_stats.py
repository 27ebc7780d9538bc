"""Benchmarks of paramgeom.diff_stats against the plain-torch ways of getting the same
numbers, and against the bandwidth limit measured in the same run (``copy_``).

Two entry points over the same cases:

* pytest-benchmark: ``python -m pytest benchmarks/bench_diff_stats.py --benchmark-enable``
* a sweep that prints a Markdown table of medians, GB/s and same-run ratios and writes the
  rows to JSON: ``python benchmarks/bench_diff_stats.py --sizes 1e6 1e7 1e8 --dtypes bf16 fp32``

Bytes counted per call: diff_stats and the torch idioms read both inputs (2 x n x itemsize);
``copy_`` of one input reads and writes n x itemsize each, the same 2 x n x itemsize of
traffic, so "x copy" is the kernel's time over the time to move the same bytes once.
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

import paramgeom

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def make_pair(n: int, dtype: torch.dtype, changed: float = 0.5, seed: int = 0, device="cpu"):
    """A base vector and a tuned copy with ``changed`` of its entries nudged by ~1%."""
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(n, generator=g)).to(dtype)
    w1 = w0.clone()
    idx = torch.rand(n, generator=g) < changed
    w1[idx] = (w0[idx].float() * (1 + 0.01 * torch.randn(int(idx.sum()), generator=g))).to(dtype)
    return w0.to(device), w1.to(device)


def torch_rel_idiom(w0, w1, eta=1e-3):
    """What analysis scripts write today: the paper's rule in fp32, whole-tensor temporaries."""
    a, b = w0.float(), w1.float()
    return int(((b - a).abs() <= eta * torch.maximum(a.abs(), b.abs())).sum())


def torch_equal_count(w0, w1):
    """The fastest plain-torch count there is: equality only."""
    return int(torch.count_nonzero(w0 == w1))


def providers(w0, w1, backend: str):
    dst = torch.empty_like(w0)
    return {
        "paramgeom": lambda: paramgeom.diff_stats(w0, w1, rel_tols=(1e-3,), backend=backend),
        # what `paramgeom diff` asks for: the paper's rule and the sparsity scripts' atol
        "paramgeom_rel+atol": lambda: paramgeom.diff_stats(
            w0, w1, rel_tols=(1e-3,), abs_tols=(1e-5,), backend=backend
        ),
        "torch_count_nonzero_eq": lambda: torch_equal_count(w0, w1),
        "torch_rel_idiom_fp32": lambda: torch_rel_idiom(w0, w1),
        "copy_one_input": lambda: dst.copy_(w0),
    }


def check(w0, w1, backend: str) -> None:
    """A fast wrong answer is not a result: the kernel must agree with the plain torch."""
    s = paramgeom.diff_stats(w0, w1, rel_tols=(1e-3,), backend=backend)
    assert s.n_within_rel[0] == torch_rel_idiom(w0, w1) or w0.dtype == torch.float32, "rel count"
    assert s.n_equal == torch_equal_count(w0, w1), "equal count"


# ---------------------------------------------------------------------------------------
# pytest-benchmark suite

SIZES_PYTEST = [1_000_000, 10_000_000, 100_000_000]


@pytest.fixture(
    scope="module",
    params=[(n, d) for n in SIZES_PYTEST for d in ("bf16", "fp32")],
    ids=lambda p: f"{p[1]}-{p[0]:.0e}",
)
def pair(request):
    n, d = request.param
    return make_pair(n, DTYPES[d])


@pytest.mark.parametrize(
    "provider", ["paramgeom", "torch_count_nonzero_eq", "torch_rel_idiom_fp32", "copy_one_input"]
)
def test_diff_stats(benchmark, pair, provider):
    w0, w1 = pair
    if provider == "paramgeom":
        check(w0, w1, "auto")
    fn = providers(w0, w1, "auto")[provider]
    benchmark.extra_info["bytes"] = 2 * w0.numel() * w0.element_size()
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)


# ---------------------------------------------------------------------------------------
# sweep with same-run ratios


@dataclass
class Row:
    dtype: str
    n: int
    provider: str
    p20_ms: float
    p50_ms: float
    p80_ms: float
    gbps: float
    x_copy: float
    speedup_vs: dict


def sweep(sizes: list[int], dtypes: list[str], reps: int, backend: str, device: str) -> list[Row]:
    rows = []
    for d in dtypes:
        for n in sizes:
            w0, w1 = make_pair(n, DTYPES[d], device=device)
            check(w0, w1, backend)
            nbytes = 2 * n * w0.element_size()
            # Interleave providers round by round so drift in the machine's bandwidth hits
            # all of them alike: only same-run ratios count.
            fns = providers(w0, w1, backend)
            times = time_interleaved(fns, reps, device)
            med = {k: statistics.median(v) for k, v in times.items()}
            for k, v in times.items():
                rows.append(
                    Row(
                        dtype=d,
                        n=n,
                        provider=k,
                        p20_ms=quantile(v, 0.2) * 1e3,
                        p50_ms=med[k] * 1e3,
                        p80_ms=quantile(v, 0.8) * 1e3,
                        gbps=nbytes / med[k] / 1e9,
                        x_copy=med[k] / med["copy_one_input"],
                        speedup_vs={
                            o: med[o] / med[k]
                            for o in med
                            if k.startswith("paramgeom") and o.startswith("torch_")
                        },
                    )
                )
            del w0, w1
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "| dtype | n | provider | p50 ms (p20-p80) | GB/s | x copy_ | paramgeom speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = ", ".join(f"{v:.1f}x vs {k}" for k, v in r.speedup_vs.items())
        lines.append(
            f"| {r.dtype} | {r.n:.0e} | {r.provider} "
            f"| {r.p50_ms:.2f} ({r.p20_ms:.2f}-{r.p80_ms:.2f}) "
            f"| {r.gbps:.1f} | {r.x_copy:.2f} | {sp} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", type=Path, default=None, help="write rows and machine info here")
    args = p.parse_args(argv)
    rows = sweep([int(s) for s in args.sizes], args.dtypes, args.reps, args.backend, args.device)
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
