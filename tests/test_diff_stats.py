"""diff_stats on the backends CI can run (cpu, its per-element "scalar" variant, torch)
against the torch reference and an independent float64 NumPy oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracle import assert_matches, diff_stats_oracle, round_bf16, to_f64

import paramgeom
from paramgeom import _dtypes, _native
from paramgeom._backends import cpu as cpu_backend
from paramgeom.api import diff_stats as api
from paramgeom.reference import diff_stats_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
SHAPES = [(), (0,), (1,), (19,), (123,), (989,), (3, 0), (7, 19), (2, 3, 7), (70_001,)]
RELS = (1e-3, 1e-2, 2.0**-8, 0.5)
ABSS = (1e-5, 1e-2)


def _specials(dtype: torch.dtype) -> list[float]:
    info = torch.finfo(dtype)
    vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        info.max,
        -info.max,
        info.tiny,
        info.tiny * 0.5,
        info.smallest_normal * 2.0**-2,
        float("nan"),
    ]
    if dtype not in (torch.float8_e4m3fn,):
        vals += [float("inf"), float("-inf")]
    return vals


def make_pair(shape, dtype, *, change=0.3, specials=True, seed=0):
    """A base tensor and a tuned copy: a fraction of entries nudged, special values mixed in."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    a = torch.randn(n, generator=g) * 0.05
    b = a.clone()
    idx = torch.rand(n, generator=g) < change
    b[idx] = a[idx] * (1 + 1e-2 * torch.randn(int(idx.sum()), generator=g))
    if specials and n >= 4:
        sp = torch.tensor(_specials(dtype))
        k = min(len(sp), n // 2)
        pos = torch.randperm(n, generator=g)[: 2 * k]
        a[pos[:k]] = sp[:k]
        b[pos[k:]] = sp[:k]
        b[pos[0]] = sp[0]  # one pair identical special (e.g. +0 vs -0 or NaN vs NaN)
    return a.to(dtype).reshape(shape), b.to(dtype).reshape(shape)


def oracle_for(w0, w1, rel=RELS, abs_=ABSS, cast=None, per_row=False):
    a, b = to_f64(w0), to_f64(w1)
    if cast == "bf16":
        a, b = round_bf16(a), round_bf16(b)
    shape = None
    if per_row:
        shape = (math.prod(w0.shape[:-1]), w0.shape[-1]) if w0.dim() else (1, 1)
    return diff_stats_oracle(a, b, rel, abs_, per_row_shape=shape)


def run_cpu_isa(w0, w1, isa, rel=RELS, abs_=ABSS, cast=None, per_row=False, threads=None):
    """diff_stats through the cpu backend with a chosen kernel variant."""
    v0, v1 = api._rows_views(w0, w1, per_row)
    job = api.DiffStatsJob(
        w0=_dtypes.bits_view(v0),
        w1=_dtypes.bits_view(v1),
        dtype_code=_dtypes.dtype_code(w0.dtype),
        rel_tols=tuple(rel),
        abs_tols=tuple(abs_),
        cast_bf16=cast == "bf16" and w0.dtype != torch.bfloat16,
        per_row=per_row,
    )
    raw = cpu_backend.diff_stats(job, isa=isa, num_threads=threads)
    return api._result(raw, job, "cpu", tuple(w0.shape[:-1]))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(backend, dtype, shape):
    w0, w1 = make_pair(shape, dtype)
    stats = paramgeom.diff_stats(w0, w1, rel_tols=RELS, abs_tols=ABSS, backend=backend)
    assert stats.backend == backend
    assert_matches(stats, oracle_for(w0, w1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (19,), (2, 3, 7), (70_001,)], ids=str)
@pytest.mark.parametrize("per_row", [False, True])
def test_scalar_variant_matches_oracle(dtype, shape, per_row):
    """isa="scalar" runs diff_stats.h's per-element rule exactly as the CUDA threads do."""
    w0, w1 = make_pair(shape, dtype)
    stats = run_cpu_isa(w0, w1, "scalar", per_row=per_row)
    assert_matches(stats, oracle_for(w0, w1, per_row=per_row))


def test_reference_matches_oracle():
    for dtype in DTYPES:
        w0, w1 = make_pair((5, 77), dtype)
        ref = diff_stats_ref(w0, w1, RELS, ABSS, per_row=True)
        assert_matches(ref, oracle_for(w0, w1, per_row=True))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cast_bf16(backend, dtype):
    w0, w1 = make_pair((3, 1001), dtype, change=0.9)
    stats = paramgeom.diff_stats(w0, w1, RELS, ABSS, cast="bf16", backend=backend)
    assert_matches(stats, oracle_for(w0, w1, cast="bf16"))
    # Rounding to bf16 first can only merge values, never separate them.
    plain = paramgeom.diff_stats(w0, w1, RELS, ABSS, backend=backend)
    assert stats.n_equal >= plain.n_equal


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize(
    "shape", [(), (1,), (19,), (4, 19), (2, 3, 7), (3, 0), (0, 5), (2, 70_000)], ids=str
)
@pytest.mark.parametrize("rel", [(1e-3,), ()], ids=["rel", "equality"])
def test_per_row(backend, shape, rel):
    w0, w1 = make_pair(shape, torch.bfloat16)
    stats = paramgeom.diff_stats(w0, w1, rel_tols=rel, per_row=True, backend=backend)
    assert stats.row_changed.shape == w0.shape[:-1]
    assert stats.row_changed.dtype == torch.int64 and stats.row_sq_delta.dtype == torch.float64
    assert_matches(stats, oracle_for(w0, w1, rel=rel, abs_=(), per_row=True))
    if rel:
        assert int(stats.row_changed.sum()) == stats.numel - stats.n_within_rel[0]


def _noncontiguous_cases():
    base0, base1 = make_pair((6, 40), torch.bfloat16, specials=False)
    cube0, cube1 = make_pair((3, 4, 40), torch.float16)
    yield "row-slice", base0[:, 3:22], base1[:, 3:22]
    yield "row-step", base0[::2, :19], base1[::2, :19]
    yield "transpose", base0.t(), base1.t()
    yield "mixed", base0[:, :19], base1[:, :19].contiguous()
    yield "3d-slice", cube0[:, :, 5:12], cube1[:, :, 5:12]
    yield "3d-permute", cube0.permute(1, 0, 2), cube1.permute(1, 0, 2)
    yield "broadcast", base0[:1].expand(5, 40), base1[:1].expand(5, 40)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("case", list(_noncontiguous_cases()), ids=lambda c: c[0])
def test_non_contiguous(backend, per_row, case):
    _, w0, w1 = case
    stats = paramgeom.diff_stats(w0, w1, RELS, ABSS, per_row=per_row, backend=backend)
    want = oracle_for(w0.contiguous(), w1.contiguous(), per_row=per_row)
    assert_matches(stats, want)
    if per_row:
        assert stats.row_changed.shape == w0.shape[:-1]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_every_bit_pattern(dtype):
    """All 65536 encodings against each other's neighbours and against zero: exercises
    every decoder path (normals, subnormals, zeros, Inf, NaN payloads)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    w0 = bits.view(dtype)
    for w1 in (torch.roll(w0, 1), torch.zeros_like(w0), -w0):
        for backend in ("cpu", "torch"):
            stats = paramgeom.diff_stats(w0, w1, RELS, ABSS, backend=backend)
            assert_matches(stats, oracle_for(w0, w1))
        assert_matches(run_cpu_isa(w0, w1, "scalar"), oracle_for(w0, w1))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_every_fp8_pair(dtype):
    """All 256 x 256 fp8 pairs."""
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    w0 = bits.repeat_interleave(256).view(dtype)
    w1 = bits.repeat(256).view(dtype)
    for backend in ("cpu", "torch"):
        assert_matches(
            paramgeom.diff_stats(w0, w1, RELS, ABSS, backend=backend), oracle_for(w0, w1)
        )


def test_paper_fact_bf16_rel_rule_is_bit_compare():
    """For bf16 and eta < 2^-8 the paper's relative rule counts exactly the finite equal
    pairs; at eta = 2^-8 it does not (a power of two and its predecessor tie)."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    w0 = bits.view(torch.bfloat16)
    finite = torch.isfinite(w0.float())
    w0 = w0[finite]
    pairs = [torch.roll(w0, s) for s in (1, -1, 2)]
    # Neighbouring encodings are the adjacent values: the hardest case for the rule.
    nxt = (w0.view(torch.int16) + 1).view(torch.bfloat16)
    nxt = torch.where(torch.isfinite(nxt.float()), nxt, w0)
    pairs += [nxt, w0.clone()]
    for w1 in pairs:
        a, b = to_f64(w0), to_f64(w1)
        fin_equal = int(np.count_nonzero((a == b) & np.isfinite(a) & np.isfinite(b)))
        for eta in (1e-3, 2.0**-8 * (1 - 2.0**-20), 1e-9):
            stats = paramgeom.diff_stats(w0, w1, rel_tols=(eta,), backend="cpu")
            assert stats.n_within_rel[0] == fin_equal
            assert diff_stats_ref(w0, w1, rel_tols=(eta,)).n_within_rel[0] == fin_equal
    tie = paramgeom.diff_stats(w0, nxt, rel_tols=(2.0**-8,), backend="cpu")
    assert tie.n_within_rel[0] > diff_stats_ref(w0, nxt, rel_tols=(1e-3,)).n_within_rel[0]
    two = torch.tensor([2.0], dtype=torch.bfloat16)
    below = torch.tensor([2.0 - 2.0**-7], dtype=torch.bfloat16)
    assert paramgeom.diff_stats(below, two, rel_tols=(2.0**-8,)).n_within_rel == (1,)


def test_variants_agree_and_are_deterministic():
    w0, w1 = make_pair((3, 200_003), torch.bfloat16)
    module, _ = _native.load("_C")
    best = module.best_isa()
    isas = ["generic", "scalar"] + {"avx512": ["avx2", "avx512"], "avx2": ["avx2"]}.get(best, [])
    results = {isa: run_cpu_isa(w0, w1, isa, per_row=True) for isa in isas}
    ref = results["generic"]
    for r in results.values():
        assert_matches(r, oracle_for(w0, w1, per_row=True))
        assert r.n_within_rel == ref.n_within_rel and r.n_equal == ref.n_equal
    for isa in isas:
        one = run_cpu_isa(w0, w1, isa, per_row=True, threads=1)
        two = run_cpu_isa(w0, w1, isa, per_row=True, threads=2)
        again = run_cpu_isa(w0, w1, isa, per_row=True, threads=2)
        for x in (two, again):
            assert x == one  # dataclass equality: every count and every float bit
            assert torch.equal(x.row_sq_delta, one.row_sq_delta)
            assert torch.equal(x.row_changed, one.row_changed)


def test_auto_picks_cpu_for_cpu_tensors():
    w0, w1 = make_pair((10,), torch.float32)
    assert paramgeom.diff_stats(w0, w1).backend == "cpu"


def test_result_helpers():
    w0 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w1 = torch.tensor([1.0, 2.5, 3.0, 0.0])
    s = paramgeom.diff_stats(w0, w1, rel_tols=(1e-3, 0.5), abs_tols=(1e-5,))
    assert s.unchanged_fraction() == 0.5
    assert s.unchanged_fraction(0.5) == 0.75
    assert s.frobenius_delta == pytest.approx(math.sqrt(0.25 + 16))
    assert s.relative_change == pytest.approx(math.sqrt(16.25 / 30))
    d = s.to_dict()
    assert d["n_within_rel"] == [2, 3] and d["backend"] == "cpu"
    with pytest.raises(ValueError, match="not computed"):
        s.unchanged_fraction(0.1)
    empty = paramgeom.diff_stats(torch.empty(0), torch.empty(0))
    assert empty.numel == 0 and math.isnan(empty.unchanged_fraction())


def test_no_rel_tol_means_no_unchanged_fraction():
    s = paramgeom.diff_stats(torch.ones(3), torch.ones(3), rel_tols=())
    with pytest.raises(ValueError, match="no relative tolerance"):
        s.unchanged_fraction()


@pytest.mark.slow
def test_more_than_2_31_elements():
    """64-bit indexing: two bf16 views, shifted by one element, of one buffer of
    2^31 + 2^20 + 1 elements. The buffer repeats a random block of 2^20 elements, so the
    oracle is the block's statistics times the repeat count plus the remainder's."""
    period = 1 << 20
    reps = (1 << 11) + 1  # (2^11 + 1) * 2^20 = 2^31 + 2^20 elements per view
    n = reps * period
    assert n > 2**31
    block = (torch.randn(period) * 0.05).to(torch.bfloat16)
    block[::2] = block[1::2]  # plenty of equal neighbours
    buf = block.repeat(reps + 1)[: n + 1]
    w0, w1 = buf[:n], buf[1 : n + 1]
    stats = paramgeom.diff_stats(w0, w1, rel_tols=(1e-3, 0.25), abs_tols=(1e-4,), backend="cpu")
    a = to_f64(block)
    one = diff_stats_oracle(a, np.roll(a, -1), (1e-3, 0.25), (1e-4,))
    assert stats.numel == n
    for key in ("n_equal", "n_nonfinite_w0", "n_nonfinite_w1"):
        assert getattr(stats, key) == one[key] * reps
    assert stats.n_within_rel == tuple(c * reps for c in one["n_within_rel"])
    assert stats.n_within_abs == tuple(c * reps for c in one["n_within_abs"])
    assert stats.max_abs_delta == one["max_abs_delta"]
    for key in ("sum_sq_delta", "sum_sq_w0", "sum_sq_w1", "sum_w0w1"):
        assert getattr(stats, key) == pytest.approx(one[key] * reps, rel=1e-12)
