"""BLAS's ``syrk`` through SciPy's pointer (:mod:`paramgeom.linalg._blas`) and the CPU Grams
built on it (``_ops.gram`` / ``_ops.gram32`` under the ``auto`` backend), against float64
NumPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgeom.linalg import _blas, _ops

pytestmark = pytest.mark.skipif(
    not (_blas.available(torch.float32) and _blas.available(torch.float64)),
    reason="SciPy's BLAS pointers are not reachable in this build",
)

TOL = {torch.float32: 2e-6, torch.float64: 1e-14}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows_are_samples", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (3, 7), (130, 67), (64, 257)])
def test_syrk_updates_the_lower_triangle_only(dtype, rows_are_samples, shape):
    """``g += a^T a`` (or ``a a^T``) in the row-major lower triangle, on top of what ``g``
    held; the strict upper triangle keeps its old values until mirrored."""
    g_ = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=g_, dtype=torch.float64)
    n = shape[1] if rows_are_samples else shape[0]
    start = torch.randn(n, n, generator=g_, dtype=torch.float64)
    oracle = start.numpy() + (a.T @ a if rows_are_samples else a @ a.T).numpy()
    g = start.to(dtype).clone()
    _blas.syrk_(g, a.to(dtype), rows_are_samples=rows_are_samples)
    lower = np.tril_indices(n)
    scale = np.abs(oracle).max()
    np.testing.assert_allclose(
        g.double().numpy()[lower], oracle[lower], rtol=0, atol=TOL[dtype] * scale
    )
    upper = np.triu_indices(n, 1)
    assert np.array_equal(g.numpy()[upper], start.to(dtype).numpy()[upper])
    _blas.mirror_lower_(g)
    assert torch.equal(g, g.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_syrk_reads_a_strided_column_block(dtype):
    """A column block of a row-major matrix (rows ``stride(0)`` apart) is read in place."""
    big = torch.randn(50, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    block = big[:, 5:17].contiguous().to(dtype)  # a contiguous block; the view below is not
    view = big.to(dtype)[:, 5:17]
    assert view.stride(0) == 40 and not view.is_contiguous()
    for a in (block, view):
        g = torch.zeros(50, 50, dtype=dtype)
        _blas.mirror_lower_(_blas.syrk_(g, a, rows_are_samples=False))
        want = (big[:, 5:17] @ big[:, 5:17].T).numpy()
        np.testing.assert_allclose(g.double().numpy(), want, rtol=0, atol=TOL[dtype] * 40)


def test_syrk_refuses_what_it_cannot_update():
    g = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="one dtype"):
        _blas.syrk_(g, torch.zeros(3, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        _blas.syrk_(g.half(), torch.zeros(3, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="does not fit"):
        _blas.syrk_(g, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        _blas.syrk_(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(3, 5, dtype=torch.float64))
    for not_a_matrix in (torch.zeros((), dtype=torch.float64), torch.zeros(4, dtype=torch.float64)):
        with pytest.raises(ValueError, match="square"):
            _blas.syrk_(not_a_matrix, torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        _blas.syrk_(
            torch.zeros(4, 4, dtype=torch.float64)[:3, :3], torch.zeros(3, 3, dtype=torch.float64)
        )
    # An empty update leaves g as it was.
    g.fill_(2.0)
    assert torch.equal(
        _blas.syrk_(g, torch.zeros(0, 4, dtype=torch.float64)),
        torch.full((4, 4), 2.0, dtype=torch.float64),
    )


def _pair(m, n, seed, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(m, n, generator=g)).to(dtype)
    w1 = (w0.float() + 1e-3 * torch.randn(m, n, generator=g)).to(dtype)
    return w0, w1


@pytest.mark.parametrize("shape", [(300, 257), (257, 600), (1, 5), (5, 1), (64, 64)])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("block_elems", [1 << 22, 1000])
def test_cpu_grams_by_syrk_match_the_float64_oracle(monkeypatch, shape, with_base, block_elems):
    """``_ops.gram`` (float64) to float64 rounding and ``_ops.gram32`` to float32 rounding of
    the oracle ``d^T d`` / ``d d^T`` of the smaller side, with blocks crossing the matrix
    (``block_elems=1000``), exactly symmetric, and through ``syrk``."""
    monkeypatch.setattr(_ops, "_SYRK_BLOCK_ELEMS", block_elems)
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 1)
    calls = []
    real = _blas.syrk_
    monkeypatch.setattr(_blas, "syrk_", lambda *a, **k: calls.append(1) or real(*a, **k))
    w0, w1 = _pair(*shape, seed=shape[0] * 7 + shape[1])
    m, n = shape
    side = "right" if n <= m else "left"
    d = (w1.double() - w0.double()) if with_base else w1.double()
    want = (d.T @ d if side == "right" else d @ d.T).numpy()
    base = w0 if with_base else None
    scale = max(np.abs(want).max(), 1e-300)
    g64 = _ops.gram(base, w1, side)
    g32 = _ops.gram32(base, w1, side)
    assert g64.dtype == torch.float64 and g32.dtype == torch.float32
    np.testing.assert_allclose(g64.numpy(), want, rtol=0, atol=1e-15 * scale * max(m, n))
    np.testing.assert_allclose(
        g32.double().numpy(), want, rtol=0, atol=2e-7 * scale * max(m, n) ** 0.5 * 4
    )
    assert torch.equal(g64, g64.T) and torch.equal(g32, g32.T)
    assert len(calls) >= 2


def test_named_backend_and_missing_blas_keep_their_own_paths(monkeypatch):
    """``kernel_backend("cpu")`` runs the float64 kernel, and without SciPy's pointers the
    GEMM paths run: the same Gram either way (float64: to rounding)."""
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 1)
    w0, w1 = _pair(200, 96, seed=5)
    auto = _ops.gram(w0, w1, "right")
    calls = []
    monkeypatch.setattr(_blas, "syrk_", lambda *a, **k: calls.append(1))
    with _ops.kernel_backend("cpu"):
        named = _ops.gram(w0, w1, "right")
        named32 = _ops.gram32(w0, w1, "right")
    monkeypatch.setattr(_blas, "available", lambda dtype: False)
    missing = _ops.gram(w0, w1, "right")
    assert calls == []
    for other in (named, missing):
        np.testing.assert_allclose(
            other.numpy(), auto.numpy(), rtol=0, atol=1e-14 * auto.abs().max().item()
        )
    np.testing.assert_allclose(
        named32.double().numpy(), auto.numpy(), rtol=0, atol=1e-5 * auto.abs().max().item()
    )


def test_float32_weights_are_not_changed_by_the_float32_gram():
    """Float32 weights convert to float32 as themselves: the difference must be a new
    tensor, never formed in the caller's ``w1``."""
    w0, w1 = _pair(128, 64, seed=9, dtype=torch.float32)
    before = w1.clone()
    _ops.gram32(w0, w1, "right")
    _ops.gram32(w0.T, w1.T, "left")
    assert torch.equal(w1, before)


def test_small_float64_grams_keep_the_fused_kernel(monkeypatch):
    """Below ``SYRK_FLOAT64_MIN`` columns the fused kernel forms the float64 Gram (faster
    there); the float32 Gram takes ``syrk`` at every size."""
    calls = []
    real = _blas.syrk_
    monkeypatch.setattr(
        _blas, "syrk_", lambda g, *a, **k: calls.append(g.dtype) or real(g, *a, **k)
    )
    w0, w1 = _pair(300, _ops.SYRK_FLOAT64_MIN - 1, seed=3)
    _ops.gram(w0, w1, "right")
    assert calls == []
    _ops.gram32(w0, w1, "right")
    assert set(calls) == {torch.float32}


def test_syrk_on_two_threads_at_once_gives_each_its_own_gram():
    """diff's workers call ``syrk`` side by side (the GIL is let go for the call): each
    thread's Gram is bit-identical to the same call made alone."""
    import concurrent.futures

    pairs = [_pair(400, 300 + 7 * i, seed=20 + i) for i in range(4)]

    def work(pair):
        return _ops.gram32(pair[0], pair[1], "right")

    alone = [work(p) for p in pairs]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(work, pairs))
            assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
