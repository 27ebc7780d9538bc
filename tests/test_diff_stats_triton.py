"""The Triton diff-statistics kernel against the float64 reference (paramgeom.reference).

Without a GPU the kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET must
be set before ``paramgeom.triton_kernels`` is first imported (Triton reads it when the
kernels are decorated). tests/conftest.py sets it; the lines below repeat that for a run of
this file under another conftest. With a GPU the compiled kernels run on CUDA tensors
(``TRITON_INTERPRET=1`` forces the interpreter there too).

Counts and the max must match exactly, sums to 1e-12 relative.
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from paramgeom import _contract, _dtypes, reference  # noqa: E402
from paramgeom._backends import triton as triton_backend  # noqa: E402
from paramgeom._backends.job import DiffStatsJob  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
REL = (1e-3, 1e-2, 2.0**-8, 0.5)
ABS = (1e-5, 1e-2)
SUM_RTOL = 1e-12


@pytest.fixture(scope="module")
def device() -> torch.device:
    from paramgeom.triton_kernels import diff_stats as kernels

    if kernels.INTERPRETED:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    pytest.skip("triton_kernels were imported compiled (TRITON_INTERPRET unset) and no GPU")


# ---------------------------------------------------------------------------- helpers


def make_job(w0, w1, rel=REL, abs_=ABS, cast=None, per_row=False) -> DiffStatsJob:
    """The job the API builds: a contiguous tensor is one row of numel elements unless
    per-row outputs are asked for; otherwise rows are all dims but the last."""

    def rows_view(t):
        if t.dim() == 0:
            t = t.reshape(1, 1)
        if not per_row and t.is_contiguous():
            return t.view(1, t.numel())
        return t.view(math.prod(t.shape[:-1]), t.shape[-1])  # test inputs always have a view

    return DiffStatsJob(
        w0=_dtypes.bits_view(rows_view(w0)),
        w1=_dtypes.bits_view(rows_view(w1)),
        dtype_code=_dtypes.dtype_code(w0.dtype),
        rel_tols=tuple(rel),
        abs_tols=tuple(abs_),
        cast_bf16=cast == "bf16",
        per_row=per_row,
    )


def specials(dtype: torch.dtype) -> torch.Tensor:
    """+-0, NaN, +-Inf, subnormals, the largest and smallest normals of ``dtype`` and bf16
    rounding ties, as fp32 values."""
    fi = torch.finfo(dtype)
    tiny = fi.smallest_normal
    vals = [0.0, -0.0, math.nan, math.inf, -math.inf, fi.max, -fi.max, fi.max / 2, tiny, -tiny]
    vals += [tiny / 2, -tiny / 4, tiny / 8, 1.0, -1.0, 1.0 + fi.eps]
    vals += [1.0 + 2.0**-8, -(1.0 + 3 * 2.0**-8)]  # bf16 rounding ties (down and up)
    return torch.tensor(vals, dtype=torch.float32)


def make_pair(shape, dtype, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """w0 and a w1 mixing equal, slightly, clearly and totally changed entries, with
    special values (see ``specials``) sprinkled into both."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    w0 = torch.randn(n, generator=g) * 10.0 ** torch.randint(-3, 3, (n,), generator=g)
    kind = torch.randint(0, 6, (n,), generator=g)
    noise = torch.randn(n, generator=g)
    w1 = torch.where(kind == 0, w0, w0 * (1 + 1e-4 * noise))
    w1 = torch.where(kind == 2, w0 * (1 + 2e-3 * noise), w1)
    w1 = torch.where(kind == 3, w0 * (1 + 0.3 * noise), w1)
    w1 = torch.where(kind == 4, noise, w1)
    w1 = torch.where(kind == 5, -w0, w1)
    sp = specials(dtype)
    pick = torch.rand(n, generator=g) < 0.25
    i0 = torch.randint(0, sp.numel(), (n,), generator=g)
    other = torch.randint(0, sp.numel(), (n,), generator=g)
    i1 = torch.where(torch.rand(n, generator=g) < 0.5, i0, other)
    w0 = torch.where(pick, sp[i0], w0)
    w1 = torch.where(pick, sp[i1], w1)
    return w0.to(dtype).reshape(shape), w1.to(dtype).reshape(shape)


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor, what: str):
    """|got - want| <= SUM_RTOL * scale, where scale is the sum of |terms| (the sum itself
    for sums of squares): relative accuracy that a cancelling sum can still meet."""
    err = (got - want).abs()
    bad = ~(err <= SUM_RTOL * scale)
    assert not bad.any(), f"{what}: got {got.tolist()}, want {want.tolist()}, scale {scale}"


def check(job: DiffStatsJob, w0, w1, cast=None, device=None):
    """Run the backend on ``job`` (moved to ``device``) and compare with the reference."""
    if device is not None and job.w0.device != device:
        job = DiffStatsJob(
            w0=job.w0.to(device),
            w1=job.w1.to(device),
            dtype_code=job.dtype_code,
            rel_tols=job.rel_tols,
            abs_tols=job.abs_tols,
            cast_bf16=job.cast_bf16,
            per_row=job.per_row,
        )
    raw = triton_backend.diff_stats(job)
    a = reference.decode_ref(w0, cast)
    b = reference.decode_ref(w1, cast)
    counts, sums = reference.diff_stats_terms_ref(a, b, job.rel_tols, job.abs_tols)
    assert raw.counts.dtype == torch.int64 and raw.counts.device.type == "cpu"
    assert raw.sums.dtype == torch.float64 and raw.sums.device.type == "cpu"
    assert torch.equal(raw.counts, counts), f"counts\n got {raw.counts}\nwant {counts}"
    m = _contract.MAX_ABS_DELTA
    assert raw.sums[m].item() == sums[m].item(), f"max: got {raw.sums[m]}, want {sums[m]}"
    fin = (a.abs() < math.inf) & (b.abs() < math.inf)
    a0, b0 = torch.where(fin, a, 0.0), torch.where(fin, b, 0.0)
    scale = torch.stack([sums[0], sums[1], sums[2], (a0 * b0).abs().sum()])
    assert_sums_close(raw.sums[:m], sums[:m], scale, "sums")
    if not job.per_row:
        assert raw.row_changed is None and raw.row_sq_delta is None
        return raw
    ref = reference.diff_stats_ref(w0, w1, job.rel_tols, job.abs_tols, cast, per_row=True)
    assert raw.row_changed.dtype == torch.int64 and raw.row_sq_delta.dtype == torch.float64
    got_changed = raw.row_changed.cpu().reshape(ref.row_changed.shape)
    assert torch.equal(got_changed, ref.row_changed), f"{got_changed} != {ref.row_changed}"
    got_sq = raw.row_sq_delta.cpu().reshape(ref.row_sq_delta.shape)
    assert_sums_close(got_sq, ref.row_sq_delta, ref.row_sq_delta, "row_sq_delta")
    return raw


# ------------------------------------------------------------------------------ tests

SHAPES = {
    "empty": (0,),
    "0d": (),
    "1": (1,),
    "19": (19,),
    "123": (123,),
    "989": (989,),
    "3x5": (3, 5),
    "2x3x7": (2, 3, 7),
}
CASES = [(dt, None) for dt in DTYPES] + [(torch.float32, "bf16")]
CASE_IDS = [str(dt).replace("torch.", "") + ("-cast_bf16" if c else "") for dt, c in CASES]


@pytest.mark.parametrize("per_row", [False, True], ids=["totals", "per_row"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize(("dtype", "cast"), CASES, ids=CASE_IDS)
def test_matches_reference(dtype, cast, shape, per_row, device):
    w0, w1 = make_pair(shape, dtype, seed=len(shape) * 1000 + math.prod(shape))
    check(make_job(w0, w1, cast=cast, per_row=per_row), w0, w1, cast, device)


@pytest.mark.parametrize("per_row", [False, True], ids=["totals", "per_row"])
@pytest.mark.parametrize(("dtype", "cast"), CASES, ids=CASE_IDS)
def test_row_slice_non_contiguous(dtype, cast, per_row, device):
    """Rows of a wider tensor (row stride 32, not 19); w1 has a different row stride."""
    big0, _ = make_pair((4, 32), dtype, seed=1)
    _, big1 = make_pair((4, 40), dtype, seed=2)
    w0, w1 = big0[:, :19], big1[:, 3:22]
    job = make_job(w0, w1, cast=cast, per_row=per_row)
    assert job.w0.stride(0) == 32 and job.w1.stride(0) == 40  # no copy was made
    check(job, w0, w1, cast, device)


@pytest.mark.parametrize(
    ("shape", "per_row"),
    [
        ((70001,), False),  # 68 full rows over 2 programs, then a 369-element tail
        ((2, 70000), True),  # long rows split over 2 column programs
        ((130, 1024), True),  # 3 row programs of 64 rows
        ((300, 37), True),  # short rows packed 32 to a tile
    ],
    ids=["flat-multi-program", "column-split", "row-programs", "short-rows"],
)
def test_multi_program(shape, per_row, device):
    w0, w1 = make_pair(shape, torch.bfloat16, seed=7)
    check(make_job(w0, w1, per_row=per_row), w0, w1, None, device)


def test_non_contiguous_multi_program(device):
    big0, big1 = make_pair((70, 1100), torch.float16, seed=3)
    w0, w1 = big0[:, 5:1035], big1[:, :1030]
    check(make_job(w0, w1, per_row=False), w0, w1, None, device)


@pytest.mark.parametrize("cast", [None, "bf16"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_16_bit_patterns(dtype, cast, device):
    """Every 16-bit pattern against its neighbour patterns and against a permutation:
    checks the exact decoders, including subnormals, Inf and NaN payloads."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    w0 = bits.view(dtype)
    perm = torch.randperm(bits.numel(), generator=torch.Generator().manual_seed(0))
    for w1 in (bits.roll(1).view(dtype), bits[perm].view(dtype)):
        check(make_job(w0, w1, cast=cast), w0, w1, cast, device)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_all_8_bit_pairs(dtype, device):
    """Every pair of fp8 patterns (65536 pairs), rows per w0 pattern."""
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    w0 = bits.repeat_interleave(256).view(dtype).reshape(256, 256)
    w1 = bits.repeat(256).view(dtype).reshape(256, 256)
    check(make_job(w0, w1, per_row=True), w0, w1, None, device)


def test_fp32_random_bits(device):
    g = torch.Generator().manual_seed(5)
    bits = torch.randint(-(2**31), 2**31, (3000,), generator=g, dtype=torch.int64)
    w0 = bits.to(torch.int32).view(torch.float32)
    w1 = (bits + torch.randint(-3, 4, (3000,), generator=g)).to(torch.int32).view(torch.float32)
    for cast in (None, "bf16"):
        check(make_job(w0, w1, cast=cast), w0, w1, cast, device)


@pytest.mark.parametrize(
    ("rel", "abs_"),
    [
        ((), ()),
        ((), (0.0, 1e-3)),
        (tuple(2.0**-k for k in range(8)), tuple(10.0**-k for k in range(8))),
    ],
    ids=["none", "abs-only", "8+8"],
)
def test_tolerance_counts(rel, abs_, device):
    """No tolerance (per-row "changed" falls back to inequality), and the maximum of 8+8."""
    w0, w1 = make_pair((9, 31), torch.float16, seed=11)
    check(make_job(w0, w1, rel=rel, abs_=abs_, per_row=True), w0, w1, None, device)


def test_identical_inputs(device):
    w0, _ = make_pair((5, 23), torch.bfloat16, seed=4)
    raw = check(make_job(w0, w0.clone(), per_row=True), w0, w0.clone(), None, device)
    assert raw.sums[_contract.SUM_SQ_DELTA].item() == 0.0
    assert raw.sums[_contract.MAX_ABS_DELTA].item() == 0.0


@pytest.mark.parametrize(("shape", "per_row"), [((70001,), False), ((3, 70000), True)])
def test_deterministic(shape, per_row, device):
    """Two calls give the same bits (no float atomics; the order depends on the shape)."""
    w0, w1 = make_pair(shape, torch.float32, seed=9)
    job = make_job(w0.to(device), w1.to(device), per_row=per_row)
    r1 = triton_backend.diff_stats(job)
    r2 = triton_backend.diff_stats(job)
    assert torch.equal(r1.counts, r2.counts)
    assert torch.equal(r1.sums.view(torch.int64), r2.sums.view(torch.int64))
    if per_row:
        assert torch.equal(r1.row_changed, r2.row_changed)
        assert torch.equal(r1.row_sq_delta.view(torch.int64), r2.row_sq_delta.view(torch.int64))


def test_status_reports_interpreter(device):
    ok, reason = triton_backend.status()
    assert ok, reason
    if device.type == "cpu":
        assert "interpreter" in reason


def test_rejects_mismatched_bits(device):
    from paramgeom.triton_kernels import diff_stats_triton

    w = torch.zeros(2, 8, dtype=torch.int16, device=device)
    with pytest.raises(TypeError, match="int32"):
        diff_stats_triton(w, w, _dtypes.FLOAT32, (1e-3,), (), False, False)
    with pytest.raises(ValueError, match="shape mismatch"):
        diff_stats_triton(w, w[:1], _dtypes.BFLOAT16, (1e-3,), (), False, False)
    with pytest.raises(ValueError, match="inner stride"):
        diff_stats_triton(w[:, ::2], w[:, ::2], _dtypes.BFLOAT16, (1e-3,), (), False, False)
    with pytest.raises(ValueError, match="at most 8"):
        diff_stats_triton(w, w, _dtypes.BFLOAT16, (1e-3,) * 9, (), False, False)


def test_plan_covers_every_element():
    """Launch plans cover the shape, respect the CUDA grid limit and keep tiles bounded."""
    from paramgeom.triton_kernels._utils import MAX_GRID_Y, TILE_ELEMS, plan_2d

    for rows, cols in [(1, 1), (1, 19), (7, 3), (1000, 1), (3, 70000), (1, 2**40), (2**33, 5)]:
        p = plan_2d(rows, cols)
        assert p.grid[0] * p.rows_per_prog >= rows and p.grid[1] * p.cols_per_prog >= cols
        assert (p.grid[0] - 1) * p.rows_per_prog < rows
        assert (p.grid[1] - 1) * p.cols_per_prog < cols
        assert p.grid[1] <= MAX_GRID_Y and p.block_r * p.block_c <= TILE_ELEMS
        assert p.rows_per_prog % p.block_r == 0 and p.cols_per_prog % p.block_c == 0


def test_public_api_backend(device):
    """``paramgeom.diff_stats(..., backend="triton")`` goes through this backend."""
    import paramgeom

    w0, w1 = make_pair((6, 50), torch.bfloat16, seed=12)
    got = paramgeom.diff_stats(w0.to(device), w1.to(device), per_row=True, backend="triton")
    want = reference.diff_stats_ref(w0, w1, per_row=True)
    assert got.backend == "triton"
    for name in ("numel", "n_equal", "n_within_rel", "max_abs_delta", "n_nonfinite_w0"):
        assert getattr(got, name) == getattr(want, name), name
    assert math.isclose(got.sum_sq_delta, want.sum_sq_delta, rel_tol=SUM_RTOL)
    assert torch.equal(got.row_changed.cpu(), want.row_changed)
