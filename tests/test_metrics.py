"""paramgeom.metrics against direct NumPy computations and hand-computed toy cases
(DESIGN.md "Metrics")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_randomized_svd import low_rank

from paramgeom import metrics as pm


def test_stable_rank_toys_and_numpy():
    assert pm.stable_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == pytest.approx(1.0)
    assert pm.stable_rank(torch.eye(7)) == pytest.approx(7.0)
    assert pm.stable_rank(torch.tensor([2.0, 1.0])) == pytest.approx(1.25)
    assert pm.stable_rank(torch.tensor([1.0, 2.0])) == pytest.approx(1.25)  # any order
    assert pm.stable_rank(torch.zeros(3, 4)) == 0.0
    a = np.random.default_rng(0).standard_normal((30, 20))
    ref = np.linalg.norm(a, "fro") ** 2 / np.linalg.norm(a, 2) ** 2
    assert pm.stable_rank(torch.from_numpy(a)) == pytest.approx(ref, rel=1e-12)
    assert pm.stable_rank(torch.from_numpy(a).float().T) == pytest.approx(ref, rel=1e-6)


def test_effective_rank():
    assert pm.effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert pm.effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert pm.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert pm.effective_rank(torch.zeros(4)) == 0.0
    s = np.array([4.0, 2.0, 1.0, 1.0])
    p = s / s.sum()
    assert pm.effective_rank(torch.from_numpy(s)) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    a = np.random.default_rng(1).standard_normal((15, 10))
    sv = np.linalg.svd(a, compute_uv=False)
    p = sv / sv.sum()
    assert pm.effective_rank(torch.from_numpy(a)) == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_frobenius_norm():
    a = np.random.default_rng(2).standard_normal((9, 11))
    assert pm.frobenius_norm(torch.from_numpy(a)) == pytest.approx(np.linalg.norm(a), rel=1e-14)
    sv = np.linalg.svd(a, compute_uv=False)
    assert pm.frobenius_norm(torch.from_numpy(sv)) == pytest.approx(np.linalg.norm(a), rel=1e-12)
    assert pm.frobenius_norm(torch.tensor([3.0, 4.0])) == 5.0


def test_spectral_drift():
    s0 = torch.tensor([3.0, 4.0])
    assert pm.spectral_drift(s0, s0) == 0.0
    assert pm.spectral_drift(s0, torch.tensor([4.0, 3.0])) == 0.0  # matched by rank
    assert pm.spectral_drift(torch.tensor([4.0, 3.0]), torch.tensor([4.0, 3.5])) == 0.1
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 12))
    b = a + 1e-3 * rng.standard_normal((20, 12))
    sa, sb = np.linalg.svd(a, compute_uv=False), np.linalg.svd(b, compute_uv=False)
    ref = np.linalg.norm(sb - sa) / np.linalg.norm(sa)
    got = pm.spectral_drift(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(ref, rel=1e-8)
    assert pm.spectral_drift(torch.zeros(2), torch.zeros(2)) == 0.0
    assert pm.spectral_drift(torch.zeros(2), torch.ones(2)) == math.inf
    with pytest.raises(ValueError, match="same length"):
        pm.spectral_drift(torch.ones(3), torch.ones(2))


def test_hill_alpha():
    # Exact power-law quantiles: lambda_i = (N / i)^(1 / (alpha - 1)) has density exponent alpha.
    n, alpha = 20000, 3.0
    i = np.arange(1, n + 1)
    lam = (n / i) ** (1.0 / (alpha - 1.0))
    s = torch.from_numpy(np.sqrt(lam))
    assert pm.hill_alpha(s) == pytest.approx(alpha, rel=0.02)
    assert pm.hill_alpha(s, tail_fraction=0.05) == pytest.approx(alpha, rel=0.02)
    # Direct formula on a toy.
    sv = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0])
    lam_t = (sv**2).numpy()
    k = max(2, round(0.5 * 5))  # tail_fraction 0.5 -> k = 2 (Python rounds half to even)
    ref = 1 + k / np.sum(np.log(lam_t[:k] / lam_t[k]))
    assert pm.hill_alpha(sv, tail_fraction=0.5) == pytest.approx(ref)
    assert math.isnan(pm.hill_alpha(torch.ones(10)))
    assert math.isnan(pm.hill_alpha(torch.tensor([1.0, 0.0, 0.0])))
    with pytest.raises(ValueError, match="tail_fraction"):
        pm.hill_alpha(sv, tail_fraction=1.5)


def test_sim_k():
    q = torch.from_numpy(np.linalg.qr(np.random.default_rng(4).standard_normal((50, 20)))[0])
    assert pm.sim_k(q, q, K=16) == pytest.approx(1.0)
    assert pm.sim_k(q[:, :16], q[:, 16:20].repeat(1, 4), K=4) == pytest.approx(0.0, abs=1e-12)
    # Half the directions shared: (1/K) * (K/2) = 1/2.
    a = q[:, :8]
    b = torch.cat([q[:, :4], q[:, 8:12]], dim=1)
    assert pm.sim_k(a, b, K=8) == pytest.approx(0.5)
    ref = np.linalg.norm(q[:, :5].numpy().T @ q[:, 3:8].numpy(), "fro") ** 2 / 5
    assert pm.sim_k(q[:, :5], q[:, 3:8], K=5) == pytest.approx(ref)
    with pytest.raises(ValueError, match="at least K"):
        pm.sim_k(q[:, :3], q, K=4)
    with pytest.raises(ValueError, match="row mismatch"):
        pm.sim_k(q, q[:10], K=2)
    with pytest.raises(ValueError, match="K must be"):
        pm.sim_k(q, q, K=0)


def test_masks_and_overlap():
    rng = np.random.default_rng(5)
    w = torch.from_numpy(low_rank(40, 30, np.array([5.0, 3.0, 1.0]), seed=5)).float()
    w = w + 0.01 * torch.from_numpy(rng.standard_normal((40, 30))).float()
    low = pm.low_magnitude_mask(w, 0.5)
    assert int(low.sum()) == 600
    assert w.abs()[low].max() <= w.abs()[~low].min()
    pmask = pm.principal_mask(w, r=3, alpha=0.25)
    assert int(pmask.sum()) == 300
    u, s, vh = np.linalg.svd(w.double().numpy())
    rec = np.abs((u[:, :3] * s[:3]) @ vh[:3])
    thr = np.sort(rec.ravel())[::-1][299]
    assert np.all(rec[pmask.numpy()] >= thr - 1e-5)
    # Changed exactly on the low-magnitude mask: all of them fall in it.
    ov = pm.principal_mask_overlap(w, low, r=3, alpha=0.5)
    assert ov.n_changed == 600 and ov.n_total == 1200
    assert ov.frac_changed_in_low == 1.0 and ov.changed_rate_low == 1.0
    assert ov.changed_rate_overall == 0.5
    pm5 = pm.principal_mask(w, r=3, alpha=0.5).numpy()
    assert ov.frac_changed_in_principal == pytest.approx((low.numpy() & pm5).sum() / 600)
    none = pm.principal_mask_overlap(w, torch.zeros_like(low), r=64)
    assert none.n_changed == 0 and math.isnan(none.frac_changed_in_low) and none.r == 30
    with pytest.raises(ValueError, match="shape mismatch"):
        pm.principal_mask_overlap(w, low[:, :5])
    with pytest.raises(TypeError, match="boolean"):
        pm.principal_mask_overlap(w, low.float())
    with pytest.raises(ValueError, match="alpha"):
        pm.low_magnitude_mask(w, 1.5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="1-D singular values or a 2-D"):
        pm.stable_rank(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=">= 0"):
        pm.effective_rank(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="NaN"):
        pm.stable_rank(torch.tensor([1.0, math.nan]))
