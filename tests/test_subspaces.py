"""top_subspaces, principal_angles and subspace_rotation against SciPy float64 oracles
(DESIGN.md "Metrics", Subspace rotation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_randomized_svd import low_rank, max_sine

from paramgeom.linalg import principal_angles, subspace_rotation, top_subspaces

sla = pytest.importorskip("scipy.linalg")

ANGLES = np.array([1e-10, 1e-8, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3, 0.1, 0.7, 1.0, 1.5, np.pi / 2])


def bases_with_angles(n: int, angles: np.ndarray, seed: int = 0, extra: int = 0):
    """Orthonormal (n, p) bases A, B (float64) whose principal angles are exactly ``angles``
    (up to the float64 rounding of one random rotation); ``extra`` more columns in A."""
    p = len(angles)
    e = np.eye(n)
    a = e[:, : p + extra]
    b = np.cos(angles) * e[:, :p] + np.sin(angles) * e[:, p + extra : 2 * p + extra]
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]
    return q @ a, q @ b


def cosine_only(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The plain cosine formula, arccos(sigma(A^T B)), in the inputs' precision."""
    return torch.sort(torch.arccos(torch.linalg.svdvals(a.T @ b).clamp(-1, 1))).values


def test_principal_angles_match_scipy_including_tiny():
    a, b = bases_with_angles(60, ANGLES)
    res = principal_angles(torch.from_numpy(a), torch.from_numpy(b))
    ref = np.sort(sla.subspace_angles(a, b))
    got = res.angles.numpy()
    assert res.angles.dtype == torch.float64
    assert np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(np.rad2deg(got), np.rad2deg(ref), atol=1e-3, rtol=0)
    # Far better than 1e-3 degrees: relative accuracy even at 1e-10 rad.
    np.testing.assert_allclose(got, ANGLES, rtol=1e-5, atol=1e-15)
    assert res.max_deg == pytest.approx(90.0, abs=1e-9)
    assert res.mean_deg == pytest.approx(np.rad2deg(ANGLES).mean(), rel=1e-9)


def test_cosine_formula_fails_where_sine_form_does_not():
    """The cosine form loses angles below ~sqrt(eps): in float32 (GPU-style arithmetic)
    everything below ~3e-4 rad, beyond the 1e-3 degree tolerance; in float64 below ~1e-8 rad
    (relative error O(1)). The sine form keeps them in both cases."""
    small = np.array([1e-10, 1e-9, 1e-5, 3e-5, 1e-4])
    a, b = bases_with_angles(40, small, seed=1)
    ref = np.sort(sla.subspace_angles(a, b))
    # float64: the cosine form returns ~0 (or ~1e-8 garbage) for 1e-10 and 1e-9 rad.
    cos64 = cosine_only(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.max(np.abs(cos64[:2] - small[:2]) / small[:2]) > 0.5
    ours = principal_angles(torch.from_numpy(a), torch.from_numpy(b)).angles.numpy()
    np.testing.assert_allclose(ours, small, rtol=1e-5)
    # float32 inputs: the cosine form in float32 misses by more than 1e-3 degrees; ours
    # (float64 on the fp32-rounded bases) stays within it.
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    cos32 = cosine_only(a32, b32).double().numpy()
    assert np.max(np.abs(np.rad2deg(cos32 - ref))) > 1e-3
    ours32 = principal_angles(a32, b32).angles.numpy()
    np.testing.assert_allclose(np.rad2deg(ours32), np.rad2deg(ref), atol=1e-3, rtol=0)


def test_principal_angles_shapes_and_k():
    a, b = bases_with_angles(50, np.array([0.01, 0.2, 0.5]), extra=4)  # a: 7 cols, b: 3
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for x, y in ((ta, tb), (tb, ta)):
        res = principal_angles(x, y)
        np.testing.assert_allclose(res.angles.numpy(), np.sort(sla.subspace_angles(a, b)))
        assert res.angles.shape == (3,)
    res = principal_angles(ta[:, :2], tb, k=2)
    np.testing.assert_allclose(
        res.angles.numpy(), np.sort(sla.subspace_angles(a[:, :2], b[:, :2])), atol=1e-14
    )
    same = principal_angles(ta, ta)
    assert same.max_deg < 1e-6
    orth = principal_angles(ta[:, :2], ta[:, 2:4])
    np.testing.assert_allclose(orth.angles.numpy(), [np.pi / 2] * 2)
    one = principal_angles(torch.ones(1, 1), torch.ones(1, 1))
    assert one.max_deg == 0.0


def test_principal_angles_bad_inputs():
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(torch.eye(4), torch.eye(5))
    with pytest.raises(ValueError, match="2-D"):
        principal_angles(torch.ones(4), torch.eye(4))
    with pytest.raises(ValueError, match="k"):
        principal_angles(torch.eye(4), torch.eye(4), k=0)
    with pytest.raises(ValueError, match="exceeds"):
        principal_angles(torch.eye(4)[:, :2], torch.eye(4), k=3)


# ---------------------------------------------------------------------------------------


def weight(m: int, n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """A weight-like matrix: geometric top spectrum (well-separated top 20) plus noise."""
    s = np.concatenate([5.0 * 0.8 ** np.arange(20), 0.02 * np.ones(min(m, n) - 20)])
    return torch.from_numpy(low_rank(m, n, s, seed=seed)).to(dtype)


def oracle(w: torch.Tensor, k: int):
    u, s, vh = np.linalg.svd(w.double().numpy(), full_matrices=False)
    return u[:, :k], s[:k], vh[:k].T


@pytest.mark.parametrize("shape", [(160, 100), (100, 160)], ids=["tall", "wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_top_subspaces_cold(shape, dtype):
    w = weight(*shape, dtype=dtype)
    uo, so, vo = oracle(w, 10)
    exact = top_subspaces(w, 10)
    assert exact.iterations == 0 and exact.converged
    np.testing.assert_allclose(exact.S.numpy(), so, rtol=1e-10)
    assert max_sine(exact.V.numpy(), vo) < 1e-6
    assert max_sine(exact.U.numpy(), uo) < 1e-6
    u, s, v = top_subspaces(w, 10, exact_threshold=0, tol=1e-7)  # cold subspace iteration
    np.testing.assert_allclose(s.numpy(), so, rtol=1e-6)
    assert max_sine(v.numpy(), vo) < 1e-5 and max_sine(u.numpy(), uo) < 1e-5


def test_top_subspaces_warm_start_beats_cold():
    """W1 = W0 + small update: the Krylov iteration seeded with W0's subspace converges in
    fewer steps than a cold one. The stop test is the relative Ritz residual (``tol`` 1e-7
    here; 1e-6 bounds sin theta only by 1e-6 s_1 / (s_12 - s_13) = 6e-5)."""
    w0 = weight(300, 200)
    upd = torch.from_numpy(low_rank(300, 200, np.array([0.05, 0.03, 0.02]), seed=9)).float()
    w1 = w0 + upd + 1e-4 * torch.randn(300, 200)
    k = 12
    r0 = top_subspaces(w0, k + 10)
    warm = top_subspaces(w1, k, init=r0.V, tol=1e-7)
    cold = top_subspaces(w1, k, exact_threshold=0, tol=1e-7)
    uo, so, vo = oracle(w1, k + 1)
    assert warm.converged and cold.converged
    assert warm.iterations < cold.iterations
    # Wedin: sin theta <= residual * s_1 / (s_k - s_{k+1}), the residual counting the fp32
    # products' rounding (2^-23 relative), which the recurrence's residual does not see.
    bound = (warm.delta + 2.0**-23) * so[0] / (so[k - 1] - so[k])
    assert max_sine(warm.V.numpy(), vo[:, :k]) <= bound
    assert max_sine(warm.U.numpy(), uo[:, :k]) <= bound
    uo, so, vo = uo[:, :k], so[:k], vo[:, :k]
    np.testing.assert_allclose(warm.S.numpy(), so, rtol=1e-6)
    assert max_sine(warm.V.numpy(), vo) < 1e-5
    assert max_sine(warm.U.numpy(), uo) < 1e-5
    # A narrower init is padded with random columns; iters caps the work.
    capped = top_subspaces(w1, k, init=r0.V[:, :k], iters=1)
    assert capped.iterations == 1 and capped.U.shape == (300, k)
    zero_iters = top_subspaces(w1, k, init=r0.V, iters=0)
    assert zero_iters.iterations == 1


def test_top_subspaces_bad_inputs():
    w = torch.zeros(10, 8)
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_subspaces(w, 0)
    with pytest.raises(ValueError, match="exceeds"):
        top_subspaces(w, 9)
    with pytest.raises(ValueError, match="2-D"):
        top_subspaces(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="init"):
        top_subspaces(w, 3, init=torch.zeros(9, 3))
    with pytest.raises(ValueError, match="init"):
        top_subspaces(w, 3, init=torch.zeros(8, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_subspace_rotation_matches_oracle(dtype):
    w0 = weight(200, 140, dtype=dtype)
    rot = torch.from_numpy(
        sla.expm(0.002 * (lambda x: x - x.T)(np.random.default_rng(4).standard_normal((200, 200))))
    )
    w1 = (rot @ w0.double()).to(dtype)  # left subspace rotates, right one barely moves
    k = 10
    res = subspace_rotation(w0, w1, k)
    u0, _, v0 = oracle(w0, k)
    u1, _, v1 = oracle(w1, k)
    for got, (a, b) in ((res.left, (u0, u1)), (res.right, (v0, v1))):
        ref = np.rad2deg(sla.subspace_angles(a, b))
        assert got.max_deg == pytest.approx(ref.max(), abs=1e-3)
        assert got.mean_deg == pytest.approx(ref.mean(), abs=1e-3)
    assert res.left.max_deg > 0.1
    assert res.converged and res.k == k


def test_subspace_rotation_identical_and_bad():
    w = weight(80, 60)
    res = subspace_rotation(w, w.clone(), 5, tol=1e-9)
    assert res.left.max_deg < 1e-3 and res.right.max_deg < 1e-3
    with pytest.raises(ValueError, match="shape mismatch"):
        subspace_rotation(w, w[:, :50], 5)
    with pytest.raises(ValueError, match="exceeds"):
        subspace_rotation(w, w, 61)
    assert math.isfinite(res.left.mean_deg)
