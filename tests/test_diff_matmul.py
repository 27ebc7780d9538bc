"""diff_matmul (DESIGN.md kernel 3) on the cpu, torch and triton (interpreter) backends
against a float64 NumPy oracle and the float64 torch reference; layouts, edge cases and
bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from emulation import skip_unless_usable_on_cpu
from oracle import assert_matrix_close, to_f64

import paramgeom._backends as registry
from paramgeom._backends import cpu as cpu_backend
from paramgeom.api.diff_matmul import diff_matmul
from paramgeom.reference import diff_matmul_ref

BACKENDS = ["cpu", "torch", "triton"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (m, n) weight shapes: one row, one column, tall, wide, odd.
SHAPES = [(1, 123), (123, 1), (989, 19), (19, 989), (123, 19)]
RTOL = 1e-5  # the contract's accuracy requirement


def make_weights(shape, dtype, *, scale=0.05, step=1e-2, seed=0):
    """A base matrix and a tuned copy nudged by about ``step`` relative."""
    g = torch.Generator().manual_seed(seed)
    w0 = scale * torch.randn(shape, generator=g)
    w1 = w0 * (1 + step * torch.randn(shape, generator=g))
    return w0.to(dtype), w1.to(dtype)


def oracle(w0, w1, x, transpose=False):
    """float64 NumPy ``(w1 - w0) @ x`` (x rounded to float32, as the kernels read it), and
    ``|w1 - w0| @ |x|``, the scale of each entry's rounding error."""
    d = to_f64(w1) - to_f64(w0)
    if transpose:
        d = d.T
    xv = x.detach().cpu().to(torch.float32).numpy().astype(np.float64)
    return d @ xv, np.abs(d) @ np.abs(xv)


def assert_close(got: torch.Tensor, want: np.ndarray, scale: np.ndarray, rtol=RTOL) -> None:
    """float32 output within ``rtol`` of the float64 oracle (oracle.assert_matrix_close)."""
    assert got.dtype == torch.float32
    assert_matrix_close(got, want, scale, rtol, atol=1e-30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("transpose", [False, True])
def test_matches_oracle(backend, dtype, shape, transpose):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    w0, w1 = make_weights(shape, dtype, seed=shape[0] * 7 + shape[1])
    k = 5
    x = torch.randn(shape[0] if transpose else shape[1], k)
    got = diff_matmul(w0, w1, x, transpose=transpose, backend=backend)
    want, scale = oracle(w0, w1, x, transpose)
    assert_close(got, want, scale)
    # The float64 torch reference defines the same numbers.
    ref = diff_matmul_ref(w0, w1, x, transpose).numpy()
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 64])
def test_sketch_widths_and_cancellation(backend, k):
    """Large weights, tiny update: the difference must be formed before any rounding of
    the product (materialising in the product's precision would lose it)."""
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    w0 = torch.randn(37, 123).to(torch.bfloat16)
    w1 = (w0.float() * (1 + 2.0**-7 * torch.randint(-1, 2, w0.shape))).to(torch.bfloat16)
    x = torch.randn(123, k)
    want, scale = oracle(w0, w1, x)
    assert_close(diff_matmul(w0, w1, x, backend=backend), want, scale)
    xt = torch.randn(37, k)
    want, scale = oracle(w0, w1, xt, True)
    assert_close(diff_matmul(w0, w1, xt, transpose=True, backend=backend), want, scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_deficient(backend):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    u, v = torch.randn(123, 2), torch.randn(2, 70)
    w0 = torch.randn(123, 70)
    w1 = w0 + 1e-3 * (u @ v)  # rank-2 update
    x = torch.randn(70, 9)
    want, scale = oracle(w0, w1, x)
    assert_close(diff_matmul(w0, w1, x, backend=backend), want, scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_difference_is_exactly_zero(backend, dtype):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    w0, _ = make_weights((19, 123), dtype)
    for transpose, rows in ((False, 123), (True, 19)):
        x = torch.randn(rows, 7)
        got = diff_matmul(w0, w0.clone(), x, transpose=transpose, backend=backend)
        assert torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_layouts(backend):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    big0, big1 = make_weights((60, 250), torch.bfloat16, seed=3)
    cases = {
        "row slices": (big0[::2, 3:126], big1[1::2, 100:223]),
        "transposed views": (big0[:, :123].T, big1[:, 7:130].T),
        "mixed layouts": (big0[:, :30].T.contiguous(), big1[:, :30].contiguous().T),
        "column strided": (big0[:, ::2], big1[:, 1::2]),
        "expanded rows": (big0[0].expand(19, 250), big1[0].expand(19, 250)),
    }
    for name, (w0, w1) in cases.items():
        m, n = w0.shape
        for transpose in (False, True):
            rows = m if transpose else n
            x = torch.randn(9, rows, dtype=torch.float64).T  # strided, float64
            got = diff_matmul(w0, w1, x, transpose=transpose, backend=backend)
            want, scale = oracle(w0, w1, x, transpose)
            try:
                assert_close(got, want, scale)
            except AssertionError as exc:
                raise AssertionError(f"{name}, transpose={transpose}: {exc}") from None


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_argument(backend):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    w0, w1 = make_weights((19, 123), torch.float16)
    x = torch.randn(123, 6, dtype=torch.bfloat16)
    want, scale = oracle(w0, w1, x)
    out = torch.full((19, 6), float("nan"))
    assert diff_matmul(w0, w1, x, backend=backend, out=out) is out
    assert_close(out, want, scale)
    holder = torch.full((19, 12), float("nan"))
    strided = holder[:, ::2]  # non-contiguous out: written through a temporary
    assert diff_matmul(w0, w1, x, backend=backend, out=strided) is strided
    assert_close(strided, want, scale)
    assert torch.isnan(holder[:, 1::2]).all()


def test_cpu_tiles_cross_blocks(monkeypatch):
    """The tile path (CPUs without AVX-512), its tiles shrunk so that odd sizes cross
    several row and column blocks."""
    monkeypatch.setattr(cpu_backend, "DM_TILE_ELEMS", 7 * 16)
    monkeypatch.setattr(cpu_backend, "DM_BLOCK_C", 16)
    for dtype in DTYPES:
        w0, w1 = make_weights((19, 123), dtype)
        for transpose, rows in ((False, 123), (True, 19)):
            x = torch.randn(rows, 3)
            want, scale = oracle(w0, w1, x, transpose)
            out = torch.empty(19 if not transpose else 123, 3)
            cpu_backend.diff_matmul_tiles(w0, w1, x, transpose, out)
            assert_close(out, want, scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_dims(backend):
    skip_unless_usable_on_cpu(backend, "diff_matmul")
    w = torch.zeros(0, 5)
    assert diff_matmul(w, w, torch.randn(5, 3), backend=backend).shape == (0, 3)
    got = diff_matmul(w, w, torch.randn(0, 3), transpose=True, backend=backend)
    assert torch.equal(got, torch.zeros(5, 3))  # empty reduction: zeros
    w = torch.zeros(4, 0, dtype=torch.bfloat16)
    assert torch.equal(diff_matmul(w, w, torch.randn(0, 3), backend=backend), torch.zeros(4, 3))
    w = torch.ones(4, 5)
    assert diff_matmul(w, w, torch.randn(5, 0), backend=backend).shape == (4, 0)
    out = torch.full((5, 2), 7.0)
    diff_matmul(torch.ones(0, 5), torch.ones(0, 5), torch.ones(0, 2), True, backend, out)
    assert torch.equal(out, torch.zeros(5, 2))


def test_auto_uses_cpu_on_cpu_tensors():
    w0, w1 = make_weights((19, 123), torch.bfloat16)
    x = torch.randn(123, 4)
    auto = diff_matmul(w0, w1, x)
    assert torch.equal(auto, diff_matmul(w0, w1, x, backend="cpu"))


def test_auto_skips_backends_without_the_op(monkeypatch):
    monkeypatch.delitem(registry.OPS["diff_matmul"], "cpu")  # a backend without the op
    name, _ = registry.resolve("auto", torch.device("cpu"), op="diff_matmul")
    assert name == "torch"
    with pytest.raises(ValueError, match="backend 'cpu' does not implement diff_matmul"):
        diff_matmul(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 1), backend="cpu")
    assert registry.resolve("auto", torch.device("cpu"), op="diff_stats")[0] == "cpu"


W = torch.ones(4, 5)
X = torch.ones(5, 2)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((W.numpy(), W, X), {}, TypeError, "w0 must be a torch.Tensor"),
        ((W[0], W[0], X), {}, ValueError, r"w0 must be 2-D, got shape \(5,\)"),
        ((W, torch.ones(4, 6), X), {}, ValueError, r"shape mismatch: w0 has shape \(4, 5\)"),
        ((W, W.half(), X), {}, TypeError, "dtype mismatch: w0 is torch.float32"),
        ((W.double(), W.double(), X), {}, TypeError, "bfloat16, float16 or float32"),
        ((W.int(), W.int(), X), {}, TypeError, "got torch.int32"),
        ((W, W, torch.ones(4, 2)), {}, ValueError, r"x must have 5 rows, got shape \(4, 2\)"),
        ((W, W, X), {"transpose": True}, ValueError, r"\^T @ x: .* x must have 4 rows"),
        ((W, W, torch.ones(5)), {}, ValueError, "x must be 2-D"),
        ((W, W, X.int()), {}, TypeError, "x must be a floating-point tensor"),
        ((W, W, X), {"out": torch.ones(4, 2, dtype=torch.float64)}, TypeError, "out must be"),
        ((W, W, X), {"out": torch.ones(5, 2)}, ValueError, r"out must have shape \(4, 2\)"),
        ((W, W, X), {"backend": "nope"}, ValueError, "unknown backend 'nope'"),
        ((W, W, X), {"backend": "cuda"}, ValueError, "runs on cuda tensors"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        diff_matmul(*args, **kwargs)
