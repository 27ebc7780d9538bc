"""``paramgeom.linalg.eigen`` (the subset eigensolver behind the exact spectra) and the
symmetric-block Gram of the CPU fallback, against float64 NumPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from paramgeom._backends import cpu as cpu_backend
from paramgeom.linalg import eigenvalues_desc, top_eigenpairs


def _gram(n: int, m: int, seed: int, decay: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    a = a * torch.arange(1, n + 1, dtype=torch.float64) ** -decay
    return a.T @ a


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (64, 8), (257, 32), (300, 300)])
@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_top_eigenpairs_match_the_float64_oracle(n, k, decay):
    g = _gram(n, n + 13, seed=n + k, decay=decay)
    want_vals, want_vecs = np.linalg.eigh(g.numpy())
    want_vals, want_vecs = want_vals[::-1][:k], want_vecs[:, ::-1][:, :k]
    vals, vecs = top_eigenpairs(g, k)
    assert vals.shape == (k,) and vecs.shape == (n, k) and vals.dtype == torch.float64
    np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-12, atol=1e-12 * want_vals[0])
    assert torch.all(vals[:-1] >= vals[1:])
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    # Vectors up to sign (and rotation within clusters): the subspaces agree.
    if k < n:
        assert np.rad2deg(subspace_angles(vecs.numpy(), want_vecs)).max() < 1e-8
    # The residual of each pair is at rounding level.
    res = g @ vecs - vecs * vals
    assert float(res.abs().max()) < 1e-10 * float(vals[0])


@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_float32_reduction_then_float64_ritz_matches_the_oracle(monkeypatch, decay):
    """The large-n path (float32 syevr on a window, float64 Rayleigh-Ritz), forced on a
    small matrix: eigenvalues to 1e-9 relative, the top-K subspace within 1e-3 degree,
    vectors orthonormal in float64."""
    from paramgeom.linalg import eigen

    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    n, k = 300, 37
    g = _gram(n, 400, seed=7, decay=decay)
    want_vals, want_vecs = np.linalg.eigh(g.numpy())
    want_vals, want_vecs = want_vals[::-1][:k], want_vecs[:, ::-1][:, :k]
    vals, vecs = top_eigenpairs(g, k)
    np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-9)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    assert np.rad2deg(subspace_angles(vecs.numpy(), want_vecs)).max() < 1e-3


def test_top_eigenpairs_symmetrises_and_checks_k():
    g = _gram(20, 30, seed=1)
    skew = torch.triu(torch.ones(20, 20, dtype=torch.float64), 1) * 1e-3
    vals, _ = top_eigenpairs(g + skew, 4)  # the symmetric part is what is solved
    want = np.linalg.eigvalsh((g + 0.5 * (skew + skew.T)).numpy())[::-1][:4]
    np.testing.assert_allclose(vals.numpy(), want, rtol=1e-12)
    for bad in (0, 21):
        with pytest.raises(ValueError, match="k must be in"):
            top_eigenpairs(g, bad)
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(torch.zeros(3, 4, dtype=torch.float64), 1)


def test_zero_and_repeated_eigenvalues():
    """A zero matrix and an identity (every eigenvalue repeated): eigenvalues exact, vectors
    orthonormal, whichever basis of the repeated eigenspace is returned."""
    for g, value in ((torch.zeros(9, 9, dtype=torch.float64), 0.0),
                     (torch.eye(9, dtype=torch.float64), 1.0)):  # fmt: skip
        vals, vecs = top_eigenpairs(g, 4)
        assert torch.all(vals == value)
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(4), atol=1e-12)
        assert torch.all(eigenvalues_desc(g) == value)


def test_eigenvalues_desc_match_the_oracle():
    g = _gram(129, 200, seed=3, decay=1.0)
    want = np.linalg.eigvalsh(g.numpy())[::-1]
    got = eigenvalues_desc(g)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-13 * want[0])


@pytest.mark.parametrize("n", [256, 257, 600])
@pytest.mark.parametrize("with_x0", [True, False])
def test_gram_blocks_upper_triangle_equals_the_full_product(monkeypatch, n, with_x0):
    """The CPU fallback computes the upper block triangle and mirrors it: with G's earlier
    content kept, alpha applied once, odd column counts crossing block edges, and row blocks
    shrunk so that several are summed."""
    monkeypatch.setattr(cpu_backend, "GRAM_TILE_ELEMS", 1)
    monkeypatch.setattr(cpu_backend, "GRAM_MIN_ROWS", 37)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(101, n, generator=g).to(torch.bfloat16)
    x0 = torch.randn(101, n, generator=g).to(torch.bfloat16) if with_x0 else None
    G0 = torch.randn(n, n, generator=g, dtype=torch.float64)  # not symmetric on purpose
    G = G0.clone()
    cpu_backend.gram_update_blocks(G, x, x0, -0.5)
    d = x.double() - (x0.double() if with_x0 else 0.0)
    want = G0 - 0.5 * (d.T @ d)
    torch.testing.assert_close(G, want, rtol=1e-13, atol=1e-12)
