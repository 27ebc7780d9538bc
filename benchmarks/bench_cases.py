"""pytest-benchmark suite over the cases of ``paramgeom bench`` (``paramgeom.bench``).

Every case of the profile (diff_stats per dtype and size, diff_matmul, gram_update,
randomized_svd, sketch update) is timed twice: ``paramgeom`` (what paramgeom's dispatch runs
on this machine, the case's first kernel backend or op) and ``torch`` (the case's
plain-torch baseline). Building a case checks every provider's answer against its
reference first, so with benchmarks disabled (the project's default ``addopts``) this file
is a correctness run of the bench cases.

    python -m pytest benchmarks/bench_cases.py --benchmark-enable
    PARAMGEOM_BENCH_PROFILE=full python -m pytest benchmarks/bench_cases.py --benchmark-enable \
        --benchmark-json bench_cases.json

Profiles: ``smoke``, ``quick`` (default), ``full``; ``PARAMGEOM_BENCH_DEVICE=cuda`` runs the
cases on the GPU (skipped without one).
"""

from __future__ import annotations

import os
from functools import cache

import pytest
import torch

from paramgeom import bench

PROFILE = os.environ.get("PARAMGEOM_BENCH_PROFILE", "quick")
DEVICE = os.environ.get("PARAMGEOM_BENCH_DEVICE", "cpu")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("PARAMGEOM_BENCH_DEVICE=cuda: no CUDA GPU here", allow_module_level=True)

BUILDERS = bench.case_builders(DEVICE, PROFILE)


@cache
def built(case_id: str) -> bench.Case:
    return BUILDERS[case_id]()


@pytest.mark.parametrize("role", ["paramgeom", "torch"])
@pytest.mark.parametrize("case_id", list(BUILDERS))
def test_case(benchmark, case_id, role):
    case = built(case_id)
    name = case.primary if role == "paramgeom" else case.baseline
    benchmark.group = case_id
    benchmark.extra_info.update(
        op=case.op,
        case=case.label,
        provider=name,
        bytes=case.nbytes,
        flop=case.flop,
        device=DEVICE,
    )
    benchmark.pedantic(case.providers[name], rounds=5, warmup_rounds=1, iterations=1)
