"""``orthonormalise_near`` (Cholesky QR with a Householder fallback) against Householder QR in
float64: the same column space and signs, orthonormal to rounding, on the bases the exact path
gives it and on the ones it must hand to the fallback."""

from __future__ import annotations

import pytest
import torch

from paramgeom.linalg import cholesky_qr
from paramgeom.linalg.cholesky_qr import orthonormalise_near


def _householder(x):
    q, r = torch.linalg.qr(x, mode="reduced")
    sign = torch.sign(torch.diagonal(r))
    sign[sign == 0] = 1.0
    return q * sign


def _orthonormal(m, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q


def _check(x, q, tol=1e-13):
    k = x.shape[1]
    assert q.shape == x.shape
    assert torch.linalg.matrix_norm(q.T @ q - torch.eye(k, dtype=q.dtype)) <= tol * max(k, 1)
    # Same Q as Householder's with positive R diagonal (unique for full-rank x).
    assert torch.allclose(q, _householder(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("m,k", [(6880 // 8, 42), (300, 300), (97, 13), (5, 1)])
@pytest.mark.parametrize("noise", [0.0, 1e-7, 1e-4, 1e-2])
def test_near_orthonormal_bases(m, k, noise):
    """A float32-rounded eigenbasis (noise 1e-7), and bases further off (two passes)."""
    g = torch.Generator().manual_seed(m + k)
    x = _orthonormal(m, k, seed=k) + noise * torch.randn(m, k, generator=g, dtype=torch.float64)
    _check(x, orthonormalise_near(x))


def test_one_pass_when_near_and_two_when_not(monkeypatch):
    calls = []
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(
        torch.linalg, "cholesky_ex", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x = _orthonormal(200, 20, seed=1)
    orthonormalise_near(x.float().double())  # float32 rounding: one pass
    assert len(calls) == 1
    calls.clear()
    scaled = x * torch.linspace(1.0, 3.0, 20, dtype=torch.float64)  # cond 3: two passes
    _check(scaled, orthonormalise_near(scaled))
    assert len(calls) == 2


@pytest.mark.parametrize("case", ["rank_deficient", "zero_column", "ill_conditioned", "nan"])
def test_what_cholesky_qr_cannot_do_goes_to_householder(monkeypatch, case):
    """Rank-deficient, zero-column and cond ~ 1e12 bases: Householder's answer exactly (the
    fallback runs); NaN stays NaN (never a finite-looking basis)."""
    x = _orthonormal(120, 10, seed=3)
    if case == "rank_deficient":
        x[:, 4] = x[:, 2]
    elif case == "zero_column":
        x[:, 7] = 0.0
    elif case == "ill_conditioned":
        x[:, 5] = x[:, 1] + 1e-12 * x[:, 5]
    else:
        x[3, 3] = float("nan")
    used = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: used.append(1) or real(*a, **k))
    got = orthonormalise_near(x)
    assert used, "the Householder fallback did not run"
    if case == "nan":
        assert torch.isnan(got).any()
    else:
        assert torch.equal(got, _householder(x))


def test_empty_and_single_column():
    empty = torch.zeros(7, 0, dtype=torch.float64)
    assert orthonormalise_near(empty).shape == (7, 0)
    col = torch.tensor([[3.0], [4.0]], dtype=torch.float64)
    assert torch.allclose(
        orthonormalise_near(col), torch.tensor([[0.6], [0.8]], dtype=torch.float64)
    )
    assert cholesky_qr._CHOLESKY_QR_ONE_PASS < 1e-2
