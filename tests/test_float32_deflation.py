"""Spiked spectra (a few singular values far above the rest, as trained weights have): the
float32 window with the spikes' vectors projected out, against float64 oracles."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from windows import window_widths

from paramgeom import linalg
from paramgeom.linalg import _ops, eigen, top_eigenpairs

rs = importlib.import_module("paramgeom.linalg.randomized_svd")

EPS32 = 2.0**-24


def _spiked(m: int, n: int, seed: int, ratio: float, count: int = 6) -> torch.Tensor:
    """bf16 weights: a Gaussian bulk (largest singular value ``edge``) plus ``count`` spikes
    of ``ratio * edge`` down to ``0.6 * ratio * edge`` on random orthonormal vectors."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g) * 0.02
    edge = 0.02 * (m**0.5 + n**0.5)
    u, _ = torch.linalg.qr(torch.randn(m, count, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, count, generator=g))
    s = edge * ratio * torch.linspace(1.0, 0.6, count)
    return (a + (u * s) @ v.T).bfloat16()


def test_deflated_bound_is_the_stated_sum():
    """``eps32 * lambda_{s+1}`` of what is kept, ``delta * lambda_{s+1}`` and ``delta^2 *
    lambda_1`` of the spikes' own error, over the gap from the k-th value to the last."""
    vals = torch.tensor([1e4, 5e3, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    k, s = 4, 2
    gap, delta = 3.0 - 1.0, EPS32 * 1e4 / (5e3 - 1.0)
    want = math.degrees((EPS32 * 4.0 + delta * 4.0 + delta**2 * 1e4) / gap)
    assert eigen.float32_bound_deg(vals, k, deflated=s) == pytest.approx(want, rel=1e-12)
    assert eigen.float32_bound_deg(vals, k) == pytest.approx(math.degrees(EPS32 * 1e4 / gap))
    # no gap at k, or none between the spikes and the window's end: no bound
    flat = torch.tensor([5.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert eigen.float32_bound_deg(flat, 2, deflated=1) == math.inf
    assert eigen.float32_bound_deg(torch.ones(4, dtype=torch.float64), 2, deflated=1) == math.inf


def test_deflation_count_is_the_fewest_spikes_that_pass():
    """Spikes 1e6 over a bulk of about 1: the fewest top vectors whose removal lets the same
    window pass (with the safety factor), never one fewer; none for a steep power law (the
    spikes' own errors grow as fast as lambda_{s+1} falls) or without a gap at k."""
    bulk = torch.linspace(1.0, 0.5, 74, dtype=torch.float64)
    vals = torch.cat([torch.tensor([4e6, 3e6, 2e6, 1e6], dtype=torch.float64), bulk])
    k = 64
    assert eigen.float32_bound_deg(vals, k) > eigen.FLOAT32_BOUND_DEG
    s = eigen.deflation_count(vals, k)
    assert s == 4
    safe = eigen.FLOAT32_BOUND_DEG / eigen.FLOAT32_WIDTH_SAFETY
    assert eigen.float32_bound_deg(vals, k, deflated=s) <= safe
    assert eigen.float32_bound_deg(vals, k, deflated=s - 1) > safe
    steep = torch.arange(1, 81, dtype=torch.float64) ** -3.2
    assert eigen.deflation_count(steep, 64) is None
    assert eigen.deflation_count(torch.ones(80, dtype=torch.float64), 64) is None
    assert eigen.deflation_count(vals, 1) is None  # nothing may be removed below k


@pytest.mark.parametrize("shape", [(700, 560), (560, 700)])
@pytest.mark.parametrize("ratio", [100.0, 1000.0])
@pytest.mark.parametrize("with_base", [False, True])
def test_exact_svd_projects_spikes_out_and_matches_the_float64_oracle(
    monkeypatch, shape, ratio, with_base
):
    """The first float32 window fails its bound (the spikes set eps32 * lambda_1), no wider
    one is predicted; the second window, of dW with the spikes' vectors projected out, passes:
    no float64 Gram is formed, singular values match float64 LAPACK to 1e-9 and both top-k
    subspaces are within the 0.01 degree kept (measured about 6e-5)."""
    m, n = shape
    k = 64
    w1 = _spiked(m, n, seed=3, ratio=ratio)
    w0 = (torch.randn(m, n, generator=torch.Generator().manual_seed(4)) * 0.02).bfloat16()
    w0 = w0 if with_base else None
    d = w1.double() - (0.0 if w0 is None else w0.double())
    widths = window_widths(monkeypatch)
    grams = []
    real_gram = rs._ops.gram
    monkeypatch.setattr(rs._ops, "gram", lambda *a: grams.append(1) or real_gram(*a))
    u, s, vh = rs.exact_svd(w0, w1, k)
    first = k + eigen.FLOAT32_MARGIN
    assert len(widths) == 2 and widths[0] == first and first - 32 <= widths[1] < first
    assert not grams
    want_u, want_s, want_vh = torch.linalg.svd(d, full_matrices=False)
    np.testing.assert_allclose(s.numpy(), want_s[:k].numpy(), rtol=1e-9)
    right = np.rad2deg(subspace_angles(vh.T.numpy(), want_vh[:k].T.numpy())).max()
    left = np.rad2deg(subspace_angles(u.numpy(), want_u[:, :k].numpy())).max()
    assert max(left, right) < 0.01
    np.testing.assert_allclose((u.T @ u).numpy(), np.eye(k), atol=1e-10)
    np.testing.assert_allclose((vh @ vh.T).numpy(), np.eye(k), atol=1e-10)


def test_without_the_projection_the_spiked_spectrum_takes_float64(monkeypatch):
    """What the projection saves: with it turned off the same matrix gets one float32 window
    and then the float64 Gram and solve (same figures to the 0.01 degree)."""
    w = _spiked(700, 560, seed=3, ratio=100.0)
    widths = window_widths(monkeypatch)
    monkeypatch.setattr(eigen, "deflation_count", lambda *a: None)
    _, s, vh = rs.exact_svd(None, w, 64)
    assert widths == [64 + eigen.FLOAT32_MARGIN]
    want = torch.linalg.svd(w.double(), full_matrices=False)
    np.testing.assert_allclose(s.numpy(), want.S[:64].numpy(), rtol=1e-9)


def test_top_eigenpairs_projects_spikes_out_of_a_float64_gram(monkeypatch):
    """The float64 Gram's float32 reduction takes the same second window (the Gram itself
    deflated, in float64) and matches the float64 oracle's top-k eigenpairs."""
    w = _spiked(700, 560, seed=5, ratio=100.0).double()
    g = w.T @ w
    k = 64
    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    widths = window_widths(monkeypatch)
    vals, vecs = top_eigenpairs(g, k, symmetric=True)
    assert len(widths) == 2 and widths[0] == k + eigen.FLOAT32_MARGIN > widths[1]
    want_vals, want_vecs = torch.linalg.eigh(g)
    np.testing.assert_allclose(vals.numpy(), want_vals.flip(0)[:k].numpy(), rtol=1e-9)
    oracle = want_vecs.flip(1)[:, :k].numpy()
    assert np.rad2deg(subspace_angles(vecs.numpy(), oracle)).max() < 0.01


def test_deflated_is_the_projected_gram():
    g = torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = g @ g.T
    b, _ = torch.linalg.qr(torch.randn(40, 3, dtype=torch.float64))
    p = torch.eye(40, dtype=torch.float64) - b @ b.T
    torch.testing.assert_close(eigen.deflated(g, b), p @ g @ p, rtol=0, atol=1e-12)
    assert float((eigen.deflated(g, b) @ b).abs().max()) < 1e-11


@pytest.mark.parametrize("shape", [(300, 257), (257, 600)])
@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("weights", ["bf16", "float64"])
def test_gram32_with_deflate_is_the_projected_gram(shape, backend, weights):
    """``gram32(..., deflate=B)`` on every path (BLAS ``syrk``, the float32 GEMMs of a named
    backend, float64 weights) against the float64 Gram of ``d (I - B B^T)`` (or ``(I - B
    B^T) d``): float32 accuracy, exactly symmetric, and B's span gone from it."""
    m, n = shape
    gen = torch.Generator().manual_seed(m + n)
    w1 = torch.randn(m, n, generator=gen) * 0.02
    w0 = torch.randn(m, n, generator=gen) * 0.02
    if weights == "bf16":
        w1, w0 = w1.bfloat16(), w0.bfloat16()
    else:
        w1, w0 = w1.double(), w0.double()
    side = "right" if n <= m else "left"
    size = min(m, n)
    b, _ = torch.linalg.qr(torch.randn(size, 5, generator=gen, dtype=torch.float64))
    p = torch.eye(size, dtype=torch.float64) - b @ b.T
    d = w1.double() - w0.double()
    want = p @ (d.T @ d if side == "right" else d @ d.T) @ p
    with linalg.kernel_backend(backend):
        got = _ops.gram32(w0, w1, side, deflate=b)
    assert got.dtype == torch.float32 and got.shape == (size, size)
    assert torch.equal(got, got.T)
    scale = float(want.abs().max())
    assert float((got.double() - want).abs().max()) <= 1e-5 * scale
    assert float((got.double() @ b).abs().max()) <= 1e-5 * scale


def test_gram32_refuses_a_deflate_basis_of_the_wrong_side_or_dtype():
    w = torch.randn(30, 20).bfloat16()
    with pytest.raises(ValueError, match=r"deflate must be float64 of shape \(20, s\)"):
        _ops.gram32(None, w, "right", deflate=torch.zeros(30, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="deflate must be float64"):
        _ops.gram32(None, w, "right", deflate=torch.zeros(20, 2))
