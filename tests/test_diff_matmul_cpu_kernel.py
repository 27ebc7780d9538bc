"""The fused AVX-512 diff_matmul kernel (csrc/cpu/diff_matmul_cpu_avx512.cpp) called
directly: against a float64 NumPy oracle across its tile and panel boundaries (96-row and
1024-column tiles of the normal product, 512 x 192 tiles of the transposed one, 24-row
panels, 16-column vectors, 64-column chunks), every storage dtype, strided rows, and the
same bits for any thread count. Skips on CPUs without AVX-512 (the tile path then serves,
tested in test_diff_matmul.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import assert_matrix_close, to_f64

from paramgeom import _dtypes, _native

module, _why = _native.load("_C")
pytestmark = pytest.mark.skipif(
    module is None or not module.diff_matmul_supported(),
    reason="fused diff_matmul kernel needs paramgeom._C on an AVX-512 CPU",
)

RTOL = 1e-5  # the contract's accuracy requirement


def pair(m, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = 0.05 * torch.randn(m, n, generator=g)
    w1 = w0 * (1 + 1e-2 * torch.randn(m, n, generator=g))
    return w0.to(dtype), w1.to(dtype)


def run(w0, w1, x, transpose, threads=2, out=None):
    m, n = w0.shape
    if out is None:
        out = torch.full((n if transpose else m, x.shape[1]), float("nan"))
    module.diff_matmul(
        _dtypes.bits_view(w0),
        _dtypes.bits_view(w1),
        dtype=_dtypes.dtype_code(w0.dtype),
        x=x,
        out=out,
        transpose=transpose,
        num_threads=threads,
    )
    return out


def check(w0, w1, x, transpose, got):
    d = to_f64(w1) - to_f64(w0)
    d = d.T if transpose else d
    xv = x.numpy().astype(np.float64)
    assert_matrix_close(got, d @ xv, np.abs(d) @ np.abs(xv), RTOL, atol=1e-30)


# (m, n): inside one tile; across the normal product's 96-row and 1024-column tiles and
# the transposed product's 512-row and 192-column tiles; ragged panels everywhere.
SHAPES = [(1, 1), (1, 1500), (1100, 1), (25, 23), (97, 1025), (530, 200), (1100, 390)]
WIDTHS = [1, 16, 17, 26, 64, 65, 130]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("transpose", [False, True])
def test_shapes_against_oracle(shape, transpose):
    w0, w1 = pair(*shape, torch.bfloat16)
    x = torch.randn(shape[0] if transpose else shape[1], 26)
    check(w0, w1, x, transpose, run(w0, w1, x, transpose))


@pytest.mark.parametrize("l", WIDTHS)
@pytest.mark.parametrize("transpose", [False, True])
def test_widths_against_oracle(l, transpose):
    w0, w1 = pair(203, 1030, torch.bfloat16, seed=l)
    x = torch.randn(203 if transpose else 1030, l)
    check(w0, w1, x, transpose, run(w0, w1, x, transpose))


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2],
    ids=str,
)
@pytest.mark.parametrize("transpose", [False, True])
def test_dtypes_against_oracle(dtype, transpose):
    w0, w1 = pair(130, 1050, dtype)
    x = torch.randn(130 if transpose else 1050, 33)
    check(w0, w1, x, transpose, run(w0, w1, x, transpose))


@pytest.mark.parametrize("transpose", [False, True])
def test_strided_rows_and_outputs(transpose):
    """Row slices of wider matrices, with different row strides for w0 and w1, an x and
    an out whose rows are longer than their width."""
    big0, big1 = pair(300, 1300, torch.bfloat16)
    other = pair(300, 1500, torch.bfloat16, seed=3)[1]
    w0 = big0[:, 100:1200]
    w1 = other[:, 7:1107]
    x_holder = torch.randn(300 if transpose else 1100, 40)
    x = x_holder[:, :29]
    out_holder = torch.full((1100 if transpose else 300, 50), float("nan"))
    got = run(w0, w1, x, transpose, out=out_holder[:, 5:34])
    check(w0, w1, x, transpose, got)
    assert torch.isnan(out_holder[:, :5]).all() and torch.isnan(out_holder[:, 34:]).all()


@pytest.mark.parametrize("transpose", [False, True])
def test_same_bits_for_any_thread_count(transpose):
    w0, w1 = pair(700, 1100, torch.bfloat16)
    x = torch.randn(700 if transpose else 1100, 26)
    one = run(w0, w1, x, transpose, threads=1)
    for threads in (2, 3):
        assert torch.equal(run(w0, w1, x, transpose, threads=threads), one)
    assert torch.equal(run(w0, w1, x, transpose, threads=1), one)


def test_zero_difference_is_exactly_zero():
    w0, _ = pair(200, 1100, torch.bfloat16)
    for transpose in (False, True):
        x = torch.randn(200 if transpose else 1100, 20)
        assert torch.equal(run(w0, w0, x, transpose), torch.zeros(1100 if transpose else 200, 20))


def test_bad_arguments():
    w0, w1 = pair(10, 20, torch.bfloat16)
    with pytest.raises(ValueError, match="shape mismatch"):
        run(w0, w1, torch.randn(10, 3), transpose=False)
    with pytest.raises(ValueError, match="shape mismatch"):
        run(w0, w1[:, :19], torch.randn(20, 3), transpose=False)
    with pytest.raises(ValueError, match="does not match dtype code 99"):
        module.diff_matmul(
            _dtypes.bits_view(w0), _dtypes.bits_view(w1), dtype=99, x=torch.randn(20, 3),
            out=torch.empty(10, 3), transpose=False,
        )  # fmt: skip


def test_fma_peak_probe_measures_something():
    """The compute limit `paramgeom bench` divides by: positive, and no faster than
    64 flops per cycle per thread at 6 GHz (a loop the compiler folded away would be)."""
    threads = 2
    gflops = module.fma_peak_gflops(2_000_000, threads)
    assert 0 < gflops < 64 * 6.0 * threads
