"""Property tests (hypothesis) of diff_matmul and gram_update on the CPU backends against
float64 oracles: odd sizes, signed zeros, subnormals, equal weights, wide value ranges,
and Gram accumulation over arbitrary row partitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import assert_matrix_close, to_f64

from paramgeom.api.diff_matmul import diff_matmul
from paramgeom.api.gram_update import gram_update

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def weight_pairs(draw, max_side=24):
    dtype = draw(st.sampled_from(DTYPES))
    m = draw(st.integers(1, max_side))
    n = draw(st.integers(1, max_side))
    tiny = torch.finfo(dtype).tiny
    value = st.one_of(
        st.sampled_from([0.0, -0.0, 1.0, -1.0, tiny, tiny / 4, 1e-3, 3.0]),
        st.floats(-4.0, 4.0, allow_nan=False, width=32),
    )
    a = draw(st.lists(value, min_size=m * n, max_size=m * n))
    mode = draw(st.sampled_from(["equal", "nudge", "fresh"]))
    if mode == "fresh":
        b = draw(st.lists(value, min_size=m * n, max_size=m * n))
    else:
        scale = 0.0 if mode == "equal" else draw(st.sampled_from([1e-3, 2.0**-8, 0.5]))
        b = [x * (1 + scale) for x in a]
    w0 = torch.tensor(a, dtype=torch.float32).to(dtype).reshape(m, n)
    w1 = torch.tensor(b, dtype=torch.float32).to(dtype).reshape(m, n)
    return w0, w1


@given(weight_pairs(), st.booleans(), st.integers(1, 9), st.sampled_from(["cpu", "torch"]))
def test_diff_matmul_property(pair, transpose, k, backend):
    w0, w1 = pair
    m, n = w0.shape
    g = torch.Generator().manual_seed(m * 131 + n * 7 + k)
    x = torch.randn(m if transpose else n, k, generator=g)
    got = diff_matmul(w0, w1, x, transpose=transpose, backend=backend)
    # The contract's rounding: exact widening, one fp32 subtraction, then exact products.
    d = (w1.float() - w0.float()).double().numpy()
    xd = x.double().numpy()
    want = (d.T if transpose else d) @ xd
    scale = np.abs(d.T if transpose else d) @ np.abs(xd)
    assert_matrix_close(got, want, scale, 1e-5, atol=1e-30)
    if torch.equal(w0, w1):
        assert not got.any(), "equal weights must give exact zeros"


@given(weight_pairs(max_side=20), st.data(), st.sampled_from(["cpu", "torch"]))
def test_gram_update_property_any_row_partition(pair, data, backend):
    """Accumulating G over any partition of the rows, in any order, equals the whole."""
    x0, x = pair
    r, n = x.shape
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, r - 1)), max_size=4))))
    bounds = [0, *[c for c in cuts if 0 < c < r], r]
    blocks = list(zip(bounds[:-1], bounds[1:], strict=True))
    order = data.draw(st.permutations(blocks))
    G = torch.zeros(n, n, dtype=torch.float64)
    for lo, hi in order:
        gram_update(G, x[lo:hi], x0[lo:hi], backend=backend)
    d = to_f64(x) - to_f64(x0)
    want = d.T @ d
    assert_matrix_close(G, want, np.abs(d).T @ np.abs(d), 1e-12)
    assert torch.equal(G, G.T) or np.allclose(G.numpy(), G.numpy().T, rtol=1e-15, atol=0)
