"""diff_stats reading block-scaled fp8 weights as stored (``scale_inv=``): the kernels
dequantise and round to bf16 inside their read, with the values of the host path
(``dequantize_blocks`` then bf16), against the float64 oracle, on cpu, torch and triton
(in its interpreter on CPU tensors; compiled on CUDA tensors on a GPU machine) and every
instruction set, for whole matrices and row blocks, and hostile scales. The CUDA kernels'
read runs under tests/test_diff_stats_cuda.py's emulator, and on a GPU there."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from emulation import skip_unless_usable_on_cpu
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import assert_matches, diff_stats_oracle

import paramgeom
from paramgeom import _native
from paramgeom._backends import cpu as cpu_backend
from paramgeom._backends import torch_ref
from paramgeom.api.diff_stats import make_scaled_job
from paramgeom.checkpoints.fp8 import dequantize_blocks, quantize_blocks

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]
RELS = (1e-3, 1e-2, 0.1)
ABSS = (1e-4, 1e-2)


def _pair(shape, fmt, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(shape, generator=g) * scale
    w1 = w0 + 0.02 * scale * torch.randn(shape, generator=g)
    w1[: shape[0] // 3] = w0[: shape[0] // 3]  # some rows unchanged (after quantisation too)
    (q0, s0), (q1, s1) = quantize_blocks(w0, fmt), quantize_blocks(w1, fmt)
    return q0, q1, s0, s1


def _host_values(q, s, row0=0):
    """What the engine computed before: dequantise on the host, round to bf16."""
    return dequantize_blocks(q, s, row_start=row0).to(torch.bfloat16)


def _oracle(q0, q1, s0, s1, row0=0, rel=RELS, abs_=ABSS, per_row=False):
    a = _host_values(q0, s0, row0).double().numpy()
    b = _host_values(q1, s1, row0).double().numpy()
    return diff_stats_oracle(a, b, rel, abs_, per_row_shape=tuple(q0.shape) if per_row else None)


def _isas() -> list[str]:
    module, why = _native.load("_C")
    assert module is not None, why
    best = module.best_isa()
    return ["generic", "scalar"] + {"avx512": ["avx2", "avx512"], "avx2": ["avx2"]}.get(best, [])


SHAPES = [(1, 1), (3, 5), (128, 128), (129, 257), (300, 1000), (7, 70000)]
# cpu and torch on CPU tensors; triton on CPU tensors in its interpreter, else on a GPU.
BACKENDS = ["cpu", "torch", "triton"]


def _usable(backend: str) -> torch.device:
    """The device ``backend`` runs these tests on (skip when it cannot run here)."""
    if backend in ("cpu", "torch"):
        return torch.device("cpu")
    if torch.cuda.is_available():
        from paramgeom.triton_kernels import diff_stats as kernels

        if not kernels.INTERPRETED:
            return torch.device("cuda")
    skip_unless_usable_on_cpu(backend, "diff_stats")
    return torch.device("cpu")


def _on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


# The interpreter is slow: Triton gets the small shapes and one long row split over column
# programs (the big shapes add minutes to CI and no path).
CASES = [(b, s) for b in BACKENDS for s in SHAPES if b != "triton" or s[0] * s[1] < 10**5]
CASES.append(("triton", (2, 9000)))


@pytest.mark.parametrize("fmt", FP8, ids=str)
@pytest.mark.parametrize("backend,shape", CASES, ids=str)
def test_scaled_read_matches_oracle_and_host_path(backend, shape, fmt):
    device = _usable(backend)
    q0, q1, s0, s1 = _pair(shape, fmt, seed=shape[0])
    d0, d1, g0, g1 = _on(device, q0, q1, s0, s1)
    got = paramgeom.diff_stats(
        d0, d1, RELS, ABSS, scale_inv=(g0, g1), per_row=True, backend=backend
    )
    assert_matches(got, _oracle(q0, q1, s0, s1, per_row=True))
    h0, h1 = _on(device, _host_values(q0, s0), _host_values(q1, s1))
    host = paramgeom.diff_stats(h0, h1, RELS, ABSS, per_row=True, backend=backend)
    assert (got.n_equal, got.n_within_rel, got.n_within_abs) == (
        host.n_equal,
        host.n_within_rel,
        host.n_within_abs,
    )
    assert torch.equal(got.row_changed, host.row_changed)


@pytest.mark.parametrize("fmt", FP8, ids=str)
def test_every_isa_and_the_scalar_rule_agree(fmt):
    q0, q1, s0, s1 = _pair((260, 3000), fmt, seed=3)
    job = make_scaled_job(q0, q1, (s0, s1), 0, RELS, ABSS, per_row=True)
    want = _oracle(q0, q1, s0, s1, per_row=True)
    results = {}
    for isa in _isas():
        raw = cpu_backend.diff_stats(job, isa=isa)
        results[isa] = raw
        counts = raw.counts.tolist()
        assert counts[1] == want["n_equal"], isa
        np.testing.assert_array_equal(raw.row_changed.numpy(), want["row_changed"])
    ref = torch_ref.diff_stats(job)
    for isa, raw in results.items():
        assert torch.equal(raw.counts, ref.counts), isa
        np.testing.assert_allclose(raw.sums.numpy(), ref.sums.numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_blocks_sum_to_the_whole(backend):
    """The engine streams big weights in row blocks: scale_row0 picks each block's scale
    rows, and the blocks' counts add up to the whole matrix's (blocks not 128-aligned)."""
    device = _usable(backend)
    q0, q1, s0, s1 = _on(device, *_pair((517, 300), torch.float8_e4m3fn, seed=7))
    whole = paramgeom.diff_stats(q0, q1, RELS, scale_inv=(s0, s1), backend=backend)
    parts = [
        paramgeom.diff_stats(
            q0[a:b], q1[a:b], RELS, scale_inv=(s0, s1), scale_row0=a, backend=backend
        )
        for a, b in ((0, 100), (100, 129), (129, 400), (400, 517))
    ]
    assert sum(p.n_equal for p in parts) == whole.n_equal
    assert tuple(map(sum, zip(*(p.n_within_rel for p in parts), strict=True))) == whole.n_within_rel
    assert math.isclose(sum(p.sum_sq_delta for p in parts), whole.sum_sq_delta, rel_tol=1e-12)
    # A block read with the wrong scale rows is not the same figure (the rows matter).
    wrong = paramgeom.diff_stats(
        q0[129:400], q1[129:400], RELS, scale_inv=(s0, s1), backend=backend
    )
    assert wrong.sum_sq_delta != parts[2].sum_sq_delta


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_rows_and_a_transposed_grid(backend):
    """A row slice keeps its row stride; a non-contiguous grid is made contiguous."""
    device = _usable(backend)
    q0, q1, s0, s1 = _on(device, *_pair((256, 512), torch.float8_e5m2, seed=11))
    v0, v1 = q0[:, 128:384], q1[:, 128:384]  # row stride 512, 256 columns
    g0 = s0[:, 1:3].t().contiguous().t()  # same values, column-major storage
    g1 = s1[:, 1:3]
    got = paramgeom.diff_stats(v0, v1, RELS, scale_inv=(g0, g1), backend=backend)
    want = diff_stats_oracle(
        dequantize_blocks(v0, s0[:, 1:3].contiguous()).to(torch.bfloat16).double().cpu().numpy(),
        dequantize_blocks(v1, s1[:, 1:3].contiguous()).to(torch.bfloat16).double().cpu().numpy(),
        RELS,
        (),
    )
    assert_matches(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hostile_scales_count_as_nonfinite_not_crash(backend):
    """NaN, Inf, zero and huge scales: the product is what fp32 arithmetic gives (Inf * 0 is
    NaN, huge * q overflows), counted as non-finite like the host path's values."""
    device = _usable(backend)
    q0, q1, s0, s1 = _pair((256, 256), torch.float8_e4m3fn, seed=2)
    s0 = s0.clone()
    s1 = s1.clone()
    s0[0, 0], s1[0, 1], s0[1, 1], s1[1, 0] = float("nan"), float("inf"), 0.0, 3e38
    d0, d1, g0, g1 = _on(device, q0, q1, s0, s1)
    got = paramgeom.diff_stats(d0, d1, RELS, ABSS, scale_inv=(g0, g1), backend=backend)
    assert_matches(got, _oracle(q0, q1, s0, s1))
    assert got.n_nonfinite_w0 > 0 and got.n_nonfinite_w1 > 0


def test_bad_scales_give_clear_errors():
    q0, q1, s0, s1 = _pair((200, 300), torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"scale_inv of w1: scale_inv shape \(2, 2\)"):
        paramgeom.diff_stats(q0, q1, scale_inv=(s0, s1[:, :2]))
    with pytest.raises(ValueError, match=r"rows \[100, 300\) need scale rows up to 2"):
        paramgeom.diff_stats(q0, q1, scale_inv=(s0, s1), scale_row0=100)
    with pytest.raises(ValueError, match="must be a float8 tensor"):
        paramgeom.diff_stats(q0.float(), q1.float(), scale_inv=(s0, s1))
    with pytest.raises(ValueError, match="needs 2-D fp8 weights"):
        paramgeom.diff_stats(q0[None], q1[None], scale_inv=(s0[None], s1[None]))
    with pytest.raises(TypeError, match="must be a pair"):
        paramgeom.diff_stats(q0, q1, scale_inv=s0)
    with pytest.raises(ValueError, match="row_start must be >= 0"):
        paramgeom.diff_stats(q0, q1, scale_inv=(s0, s1), scale_row0=-1)
    with pytest.raises(TypeError, match="scale_row0 must be an int"):
        paramgeom.diff_stats(q0, q1, scale_inv=(s0, s1), scale_row0=1.0)


def test_binding_refuses_what_the_api_would_refuse():
    """The compiled binding checks again (it never trusts its caller with memory)."""
    module, why = _native.load("_C")
    assert module is not None, why
    q0, q1, s0, s1 = _pair((200, 300), torch.float8_e4m3fn)
    job = make_scaled_job(q0, q1, (s0, s1), 0, (1e-3,), (), per_row=False)
    counts = torch.zeros(20, dtype=torch.int64)
    sums = torch.zeros(5, dtype=torch.float64)
    kw = dict(dtype=job.dtype_code, rel_tols=[1e-3], abs_tols=[], cast_bf16=False,
              changed_index=4, counts=counts, sums=sums)  # fmt: skip
    with pytest.raises(ValueError, match="does not cover weight rows"):
        module.diff_stats(job.w0, job.w1, **kw, scale0=s0[:1], scale1=s1[:1])
    with pytest.raises(ValueError, match="come together"):
        module.diff_stats(job.w0, job.w1, **kw, scale0=s0)
    with pytest.raises(ValueError, match="need fp8 inputs"):
        bf = torch.zeros(200, 300, dtype=torch.int16)
        module.diff_stats(bf, bf, **{**kw, "dtype": 1}, scale0=s0, scale1=s1)


def _property_backends() -> list[str]:
    """cpu, torch, and triton where its interpreter takes CPU tensors."""
    from paramgeom._backends import _status

    out = ["cpu", "torch"]
    if _status("triton")[0]:
        from paramgeom.triton_kernels import diff_stats as kernels

        if kernels.INTERPRETED:
            out.append("triton")
    return out


_FP8_BITS = st.integers(min_value=0, max_value=255)
_SCALES = st.sampled_from([1.0, 2.0**-10, 2.0**-20, 448.0, 0.0, float("nan"), float("inf"),
                           -1.5, 1e-45, 3e38])  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from(FP8),
    rows=st.integers(0, 140),
    cols=st.integers(0, 140),
    row0=st.integers(0, 130),
    seed=st.integers(0, 2**31 - 1),
    scale_values=st.lists(_SCALES, min_size=8, max_size=8),
)
def test_property_any_bits_any_scales(fmt, rows, cols, row0, seed, scale_values):
    """Every fp8 bit pattern (NaN, subnormals, +-0) under any scale (0, NaN, Inf,
    subnormal, huge, negative), any size (empty included) and any row offset: the CPU
    kernel, the torch reference and the Triton kernel (interpreted) agree with the oracle,
    counts exactly."""
    g = torch.Generator().manual_seed(seed)
    q0 = torch.randint(0, 256, (rows, cols), generator=g, dtype=torch.uint8).view(fmt)
    q1 = q0.clone()
    flip = torch.rand(rows, cols, generator=g) < 0.3
    q1.view(torch.uint8)[flip] = torch.randint(0, 256, (int(flip.sum()),), generator=g).to(
        torch.uint8
    )
    grid = (max(1, math.ceil((row0 + rows) / 128)), math.ceil(cols / 128))
    pick = torch.randint(0, 8, (2, *grid), generator=g)
    vals = torch.tensor(scale_values, dtype=torch.float32)
    s0, s1 = vals[pick[0]], vals[pick[1]]
    want = _oracle(q0, q1, s0, s1, row0, per_row=True)
    for backend in _property_backends():
        got = paramgeom.diff_stats(
            q0, q1, RELS, ABSS, scale_inv=(s0, s1), scale_row0=row0, per_row=True,
            backend=backend,
        )  # fmt: skip
        assert_matches(got, want)
