"""The fused AVX-512 loop of the cpu diff_stats kernel (bf16 and fp32, every tolerance in
registers) on finite data, where it runs instead of the generic passes: exact counts and
float64 sums against the NumPy oracle for every tail length of a 32- or 16-lane vector,
with staged tolerances (relative ones that are not bit tests, absolute ones) in the
compile-time-specialised counts (0 or 1 of each) and the general one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import assert_matches, diff_stats_oracle, to_f64
from test_diff_stats import run_cpu_isa

from paramgeom import _native

_module, _ = _native.load("_C")
pytestmark = pytest.mark.skipif(
    _module is None or _module.best_isa() != "avx512", reason="needs the avx512 kernel variant"
)

TOLS = [
    ((), ()),  # equal count and sums only
    ((1e-3,), ()),  # the paper's rule: a bit test for bf16, staged for fp32
    ((), (1e-5,)),  # paramgeom diff's atol
    ((1e-2,), (1e-5,)),
    ((1e-3, 1e-2, 0.05), (1e-6, 1e-4, 1e-2)),  # more than one of each: the general loop
]


def finite_pair(n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = 0.05 * torch.randn(n, generator=g)
    # relative changes spread over 1e-5..1e-1, so every tolerance splits the pairs
    scale = 10.0 ** (-5 + 4 * torch.rand(n, generator=g))
    b = a * (1 + scale * torch.randn(n, generator=g))
    same = torch.rand(n, generator=g) < 0.3
    b[same] = a[same]  # exact copies
    a[::7] = 0.0  # zeros, some against -0.0 below
    b[::14] = -0.0
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("tols", TOLS, ids=str)
def test_every_tail_length(dtype, tols):
    rel, abs_ = tols
    for n in list(range(1, 70)) + [2047, 2048, 2049, 4096 + 33]:
        w0, w1 = finite_pair(n, dtype, seed=n)
        got = run_cpu_isa(w0, w1, "avx512", rel=rel, abs_=abs_)
        want = diff_stats_oracle(to_f64(w0), to_f64(w1), rel, abs_)
        assert_matches(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_per_row_and_counts_equal_the_generic_variant(dtype):
    w0, w1 = finite_pair(37 * 301, dtype, seed=1)
    w0, w1 = w0.reshape(37, 301), w1.reshape(37, 301)
    rel, abs_ = (1e-3, 1e-2), (1e-5,)
    fused = run_cpu_isa(w0, w1, "avx512", rel=rel, abs_=abs_, per_row=True)
    generic = run_cpu_isa(w0, w1, "generic", rel=rel, abs_=abs_, per_row=True)
    assert fused.n_within_rel == generic.n_within_rel
    assert fused.n_within_abs == generic.n_within_abs
    assert fused.n_equal == generic.n_equal
    assert np.array_equal(fused.row_changed.numpy(), generic.row_changed.numpy())
