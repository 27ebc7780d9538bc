"""gram_update (DESIGN.md kernel 2) on the cpu, torch and triton (interpreter) backends
against a float64 NumPy oracle and the float64 torch reference; row blocks in random order,
layouts, edge cases and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from emulation import skip_unless_usable_on_cpu
from oracle import assert_matrix_close, to_f64

import paramgeom._backends as registry
from paramgeom._backends import cpu as cpu_backend
from paramgeom.api.gram_update import gram_update
from paramgeom.reference import gram_update_ref

BACKENDS = ["cpu", "torch", "triton"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (r, n): one row, one column, tall, wide (rank-deficient), odd, two tiles per side.
SHAPES = [(1, 19), (19, 1), (989, 19), (19, 123), (123, 70)]
# fp64 accumulation (cpu, torch) vs fp32 per call (triton).
RTOL = {"cpu": 1e-12, "torch": 1e-12, "triton": 1e-5}


def make_rows(shape, dtype, seed=0, with_x0=True):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g)
    x = x0 + 0.1 * torch.randn(shape, generator=g)
    return x.to(dtype), (x0.to(dtype) if with_x0 else None)


def oracle(G0, x, x0=None, alpha=1.0):
    """float64 NumPy ``G0 + alpha D^T D`` and ``|G0| + |alpha| |D|^T |D|`` (error scale)."""
    d = to_f64(x) - (to_f64(x0) if x0 is not None else 0.0)
    g0 = G0.detach().cpu().numpy().astype(np.float64)
    return g0 + alpha * (d.T @ d), np.abs(g0) + abs(alpha) * (np.abs(d).T @ np.abs(d))


def assert_close(G: torch.Tensor, want: np.ndarray, scale: np.ndarray, rtol: float) -> None:
    assert_matrix_close(G, want, scale, rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_x0", [True, False])
def test_matches_oracle(backend, dtype, shape, with_x0):
    skip_unless_usable_on_cpu(backend, "gram_update")
    x, x0 = make_rows(shape, dtype, seed=shape[0] + 3 * shape[1], with_x0=with_x0)
    n = shape[1]
    G0 = torch.randn(n, n, dtype=torch.float64)
    G = G0.clone()
    assert gram_update(G, x, x0, alpha=-0.75, backend=backend) is G
    want, scale = oracle(G0, x, x0, -0.75)
    assert_close(G, want, scale, RTOL[backend])
    ref = gram_update_ref(G0, x, x0, -0.75).numpy()
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_blocks_in_random_order_equal_the_whole(backend):
    skip_unless_usable_on_cpu(backend, "gram_update")
    x, x0 = make_rows((300, 37), torch.bfloat16, seed=5)
    cuts = [0, 1, 20, 64, 65, 150, 211, 300]
    blocks = list(zip(cuts[:-1], cuts[1:], strict=True))
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(1)).tolist()
    G = torch.zeros(37, 37, dtype=torch.float64)
    for i in order:
        a, b = blocks[i]
        gram_update(G, x[a:b], x0[a:b], backend=backend)
    whole = torch.zeros(37, 37, dtype=torch.float64)
    gram_update(whole, x, x0, backend=backend)
    want, scale = oracle(torch.zeros(37, 37, dtype=torch.float64), x, x0)
    assert_close(G, want, scale, RTOL[backend])
    np.testing.assert_allclose(G.numpy(), whole.numpy(), rtol=2 * RTOL[backend], atol=1e-12)
    np.testing.assert_allclose(G.numpy(), G.T.numpy(), rtol=2 * RTOL[backend], atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_difference_leaves_g_unchanged(backend, dtype):
    skip_unless_usable_on_cpu(backend, "gram_update")
    x, _ = make_rows((19, 123), dtype)
    G0 = torch.randn(123, 123, dtype=torch.float64)
    G = G0.clone()
    gram_update(G, x, x.clone(), alpha=3.0, backend=backend)
    assert torch.equal(G, G0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    skip_unless_usable_on_cpu(backend, "gram_update")
    big, big0 = make_rows((80, 150), torch.float16, seed=2)
    cases = {
        "row slices": (big[::3, 5:75], big0[1::3, 70:140]),
        "column strided": (big[:27, ::2], big0[:27, 1::2]),
        "transposed": (big[:70, :27].T, big0[:70, 27:54].T),
    }
    for name, (x, x0) in cases.items():
        n = x.shape[1]
        holder = torch.randn(n, 2 * n, dtype=torch.float64)
        G = holder[:, ::2]  # non-contiguous G: updated through a copy
        G0 = G.clone()
        gram_update(G, x, x0, alpha=0.5, backend=backend)
        want, scale = oracle(G0, x, x0, 0.5)
        try:
            assert_close(G, want, scale, RTOL[backend])
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("with_x0", [True, False])
def test_cpu_blocks(monkeypatch, with_x0):
    """The addmm path (CPUs without AVX-512), its row blocks shrunk so that odd sizes cross
    several of them."""
    monkeypatch.setattr(cpu_backend, "GRAM_TILE_ELEMS", 1)
    monkeypatch.setattr(cpu_backend, "GRAM_MIN_ROWS", 7)
    x, x0 = make_rows((123, 19), torch.bfloat16)
    x0 = x0 if with_x0 else None
    G0 = torch.randn(19, 19, dtype=torch.float64)
    G = G0.clone()
    cpu_backend.gram_update_blocks(G, x, x0, 2.0)
    want, scale = oracle(G0, x, x0, 2.0)
    assert_close(G, want, scale, 1e-12)


@pytest.mark.parametrize("G_dtype", [torch.float32, torch.float64])
def test_triton_accumulator_dtypes(G_dtype):
    """The GPU accumulators (float32, or float64) through the Triton kernel directly,
    for the direct and the row-split launches."""
    pytest.importorskip("triton")
    skip_unless_usable_on_cpu("triton", "gram_update")
    from paramgeom.triton_kernels import gram_update_triton

    for shape in ((40, 70), (989, 19)):
        x, x0 = make_rows(shape, torch.bfloat16, seed=9)
        n = shape[1]
        G0 = torch.randn(n, n, dtype=G_dtype)
        G = G0.clone()
        gram_update_triton(G, x, x0, 1.5)
        want, scale = oracle(G0, x, x0, 1.5)
        assert G.dtype == G_dtype
        assert_close(G, want, scale, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    skip_unless_usable_on_cpu(backend, "gram_update")
    G = torch.randn(5, 5, dtype=torch.float64)
    G0 = G.clone()
    assert gram_update(G, torch.ones(0, 5), backend=backend) is G
    assert torch.equal(G, G0)
    E = torch.zeros(0, 0, dtype=torch.float64)
    assert gram_update(E, torch.ones(3, 0, dtype=torch.bfloat16), backend=backend) is E


def test_auto_skips_backends_without_the_op(monkeypatch):
    monkeypatch.delitem(registry.OPS["gram_update"], "cpu")  # a backend without the op
    assert registry.resolve("auto", torch.device("cpu"), op="gram_update")[0] == "torch"
    with pytest.raises(ValueError, match="backend 'cpu' does not implement gram_update"):
        gram_update(torch.zeros(2, 2, dtype=torch.float64), torch.ones(3, 2), backend="cpu")


G2 = torch.zeros(3, 3, dtype=torch.float64)
X2 = torch.ones(4, 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((G2.numpy(), X2), {}, TypeError, "G must be a torch.Tensor"),
        ((G2, X2[0]), {}, ValueError, r"x must be 2-D, got shape \(3,\)"),
        ((G2, X2.double()), {}, TypeError, "x must be bfloat16, float16 or float32"),
        ((G2, X2, torch.ones(4, 2)), {}, ValueError, r"shape mismatch: x has shape \(4, 3\)"),
        ((G2, X2, X2.half()), {}, TypeError, "dtype mismatch: x is torch.float32"),
        ((torch.zeros(4, 4, dtype=torch.float64), X2), {}, ValueError, r"G must have shape"),
        ((torch.zeros(3, 2, dtype=torch.float64), X2), {}, ValueError, r"\(3, 3\)"),
        ((G2.float(), X2), {}, TypeError, "G on cpu must be float64, got torch.float32"),
        ((G2, X2), {"alpha": "two"}, TypeError, "alpha must be a real number"),
        ((G2, X2), {"alpha": float("nan")}, ValueError, "alpha must be finite"),
        ((G2, X2), {"backend": "nope"}, ValueError, "unknown backend 'nope'"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    G_before = args[0].clone() if isinstance(args[0], torch.Tensor) else None
    with pytest.raises(exc, match=match):
        gram_update(*args, **kwargs)
    if G_before is not None:
        assert torch.equal(args[0], G_before)
