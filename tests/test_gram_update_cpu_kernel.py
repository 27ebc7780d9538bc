"""The float64 AVX-512 gram_update kernel (csrc/cpu/gram_update_cpu_avx512.cpp) called
directly: against a float64 NumPy oracle across its blocks (512-row steps of the
reduction, 96 x 96 blocks of G, upper-triangle blocks mirrored into the lower half),
every storage dtype, x0 = None, strided rows, alpha, accumulation into a G that already
holds values, exact symmetry, and the same bits for any thread count. Skips on CPUs
without AVX-512 (the addmm path then serves, tested in test_gram_update.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import to_f64

from paramgeom import _dtypes, _native

module, _why = _native.load("_C")
pytestmark = pytest.mark.skipif(
    module is None or not module.gram_update_supported(),
    reason="gram_update kernel needs paramgeom._C on an AVX-512 CPU",
)


def pair(r, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = 0.05 * torch.randn(r, n, generator=g)
    x = x0 * (1 + 1e-2 * torch.randn(r, n, generator=g))
    return x.to(dtype), x0.to(dtype)


def run(G, x, x0, alpha=1.0, threads=2):
    module.gram_update(
        G,
        _dtypes.bits_view(x),
        None if x0 is None else _dtypes.bits_view(x0),
        dtype=_dtypes.dtype_code(x.dtype),
        alpha=alpha,
        num_threads=threads,
    )
    return G


def check(G, G_before, x, x0, alpha):
    d = to_f64(x) - (0.0 if x0 is None else to_f64(x0))
    want = G_before.numpy() + alpha * (d.T @ d)
    scale = np.abs(G_before.numpy()) + abs(alpha) * (np.abs(d).T @ np.abs(d))
    err = np.abs(G.numpy() - want)
    # float64 sums of r products: a few units of 2^-53 times the sum of magnitudes.
    assert np.all(err <= 1e-13 * scale + 1e-300), float((err / np.maximum(scale, 1e-300)).max())


# (r, n): one block; across the 512-row steps and the 96-column blocks; ragged edges.
SHAPES = [(1, 1), (300, 1), (1, 97), (257, 95), (513, 200), (700, 390)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_x0", [True, False])
def test_shapes_against_oracle(shape, with_x0):
    x, x0 = pair(*shape, torch.bfloat16)
    x0 = x0 if with_x0 else None
    G = torch.zeros(shape[1], shape[1], dtype=torch.float64)
    check(run(G, x, x0), torch.zeros_like(G), x, x0, 1.0)


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2],
    ids=str,
)
def test_dtypes_against_oracle(dtype):
    x, x0 = pair(300, 150, dtype)
    G = torch.zeros(150, 150, dtype=torch.float64)
    check(run(G, x, x0), torch.zeros_like(G), x, x0, 1.0)


def test_accumulates_into_existing_gram_with_alpha():
    x, x0 = pair(400, 130, torch.bfloat16)
    start = torch.randn(130, 130, dtype=torch.float64)
    G = start.clone()
    check(run(G, x, x0, alpha=-0.37), start, x, x0, -0.37)


def test_row_blocks_in_any_order_sum_to_the_whole():
    x, x0 = pair(600, 200, torch.bfloat16)
    whole = run(torch.zeros(200, 200, dtype=torch.float64), x, x0)
    parts = torch.zeros(200, 200, dtype=torch.float64)
    for lo, hi in ((300, 600), (0, 17), (17, 300)):
        run(parts, x[lo:hi], x0[lo:hi])
    assert torch.allclose(parts, whole, rtol=1e-13, atol=0)


def test_strided_rows():
    big, big0 = pair(300, 500, torch.bfloat16)
    other = pair(300, 700, torch.bfloat16, seed=5)[1]
    x = big[:, 50:250]
    x0 = other[:, 3:203]
    G = torch.zeros(200, 200, dtype=torch.float64)
    check(run(G, x, x0), torch.zeros_like(G), x, x0, 1.0)


def test_exactly_symmetric_and_same_bits_for_any_thread_count():
    x, x0 = pair(600, 250, torch.bfloat16)
    one = run(torch.zeros(250, 250, dtype=torch.float64), x, x0, threads=1)
    assert torch.equal(one, one.T)
    for threads in (2, 3):
        again = run(torch.zeros(250, 250, dtype=torch.float64), x, x0, threads=threads)
        assert torch.equal(again, one)


def test_bad_arguments():
    x, x0 = pair(10, 20, torch.bfloat16)
    with pytest.raises(ValueError, match="G must be"):
        run(torch.zeros(19, 19, dtype=torch.float64), x, x0)
    with pytest.raises(ValueError, match="shape mismatch"):
        run(torch.zeros(20, 20, dtype=torch.float64), x, x0[:9])
