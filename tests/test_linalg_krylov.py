"""Block Krylov SVD (paramgeom.linalg.krylov) and the randomized paths built on it, against
float64 oracles (``torch.linalg.svd`` in float64, ``scipy.linalg.subspace_angles``).

The matrices that matter are gapless: Gaussian weights have ``s_k / s_{k+1} - 1`` of a few
1e-3 at the k of the subspace metrics, where subspace iteration stalls with errors of tens
of degrees. Float64 weights take the exact float64 product path, so those tests see the
method's own error; bf16/fp32 weights add the fp32 products' rounding (about 2^-23 s_1 in
the residual).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgeom.linalg import randomized_svd, subspace_rotation, top_subspaces
from paramgeom.linalg.krylov import RESIDUAL_TOL, block_krylov_svd

sla = pytest.importorskip("scipy.linalg")


def gaussian(m: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(m, n, generator=g, dtype=torch.float64)).to(dtype)


def start_block(n: int, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def oracle(w: torch.Tensor):
    """Full float64 SVD of the stored values: U, S, V (columns)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return u, s, vh.T


def max_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest principal angle in degrees (SciPy oracle)."""
    return float(np.rad2deg(np.max(sla.subspace_angles(a.double().numpy(), b.double().numpy()))))


def sine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.sin(np.deg2rad(max_deg(a, b))))


def assert_orthonormal(q: torch.Tensor, tol: float = 1e-12) -> None:
    err = (q.T @ q - torch.eye(q.shape[1], dtype=q.dtype)).abs().max().item()
    assert err < tol, err


# ---------------------------------------------------------------------------------------
# block_krylov_svd itself


def test_gapless_gaussian_converges_to_the_oracle():
    """600 x 400 Gaussian, k = 20 (s_20 / s_21 - 1 = 0.003): residual test passed, subspaces
    within the Wedin bound of the residual, values to 1e-10 (float64 products)."""
    w = gaussian(600, 400, 1)
    k = 20
    u, s, v = oracle(w)
    gap = float(s[k - 1] / s[k]) - 1
    assert gap < 0.01  # no gap to speak of
    r = block_krylov_svd(
        None, w, k, start_block(400, 10), max_steps=40, tol=1e-8, exact_fraction=1.0
    )
    assert r.converged and not r.exact and r.residual <= 1e-8
    assert r.dim <= 300  # the Krylov space did the work, not the exact finish
    bound = r.residual * float(s[0]) / float(s[k - 1] - s[k])
    assert sine(r.U, u[:, :k]) <= bound
    assert sine(r.V, v[:, :k]) <= bound
    assert max_deg(r.V, v[:, :k]) < 1e-4
    torch.testing.assert_close(r.S, s[:k], rtol=1e-10, atol=0)
    assert_orthonormal(r.U)
    assert_orthonormal(r.V)
    # Ritz triplets: A v_i = s_i u_i holds by construction, A^T u_i - s_i v_i is the residual.
    wd = w.double()
    torch.testing.assert_close(wd @ r.V, r.U * r.S, atol=1e-12, rtol=0)
    true_res = torch.linalg.vector_norm(wd.T @ r.U - r.V * r.S, dim=0).max() / s[0]
    assert float(true_res) == pytest.approx(r.residual, rel=1e-3, abs=1e-12)


def test_step_cap_reports_not_converged():
    """The same gapless matrix with the cap at 3 steps: not converged, and the residual says
    by how much (the subspace is then far off, as the bound allows)."""
    w = gaussian(600, 400, 1)
    k = 50
    r = block_krylov_svd(None, w, k, start_block(400, 20), max_steps=3, tol=1e-6)
    assert r.steps == 3 and r.dim == 60 and not r.converged
    assert r.residual > 1e-3
    _, s, v = oracle(w)
    assert sine(r.V, v[:, :k]) <= r.residual * float(s[0]) / float(s[k - 1] - s[k])
    assert max_deg(r.V, v[:, :k]) > 1.0
    # top_subspaces passes the cap and the flag through.
    t = top_subspaces(w, k, exact_threshold=0, iters=2, oversample=10)
    assert t.iterations == 2 and not t.converged and t.delta > 1e-3


def test_clear_gap_converges_in_few_steps():
    """A gap of 2x after k = 8: two or three steps reach the float64 floor."""
    rng = np.random.default_rng(3)
    m, n, k = 300, 200, 8
    s_true = np.concatenate([np.linspace(4.0, 2.0, k), np.linspace(1.0, 0.1, n - k)])
    uq = np.linalg.qr(rng.standard_normal((m, n)))[0]
    vq = np.linalg.qr(rng.standard_normal((n, n)))[0]
    w = torch.from_numpy((uq * s_true) @ vq.T)
    r = block_krylov_svd(
        None, w, k, start_block(n, k + 4), max_steps=20, tol=1e-10, exact_fraction=1.0
    )
    assert r.converged and not r.exact and r.steps <= 10  # ~15x per step (measured)
    torch.testing.assert_close(r.S, torch.from_numpy(s_true[:k]), rtol=1e-12, atol=0)
    assert sine(r.V, torch.from_numpy(vq[:, :k])) < 1e-9
    assert sine(r.U, torch.from_numpy(uq[:, :k])) < 1e-9


def test_rank_deficient_and_zero():
    rng = np.random.default_rng(4)
    u = np.linalg.qr(rng.standard_normal((120, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((90, 3)))[0]
    w = torch.from_numpy((u * np.array([3.0, 2.0, 1.0])) @ v.T)
    r = block_krylov_svd(None, w, 8, start_block(90, 10), max_steps=10, tol=1e-10)
    assert r.converged
    torch.testing.assert_close(r.S[:3], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    assert float(r.S[3:].abs().max()) <= 1e-13
    assert sine(r.U[:, :3], torch.from_numpy(u)) < 1e-12
    assert sine(r.V[:, :3], torch.from_numpy(v)) < 1e-12
    assert_orthonormal(r.U)
    assert_orthonormal(r.V)
    # A zero matrix (a zero difference of bf16 weights): zero values, orthonormal vectors.
    w0 = gaussian(120, 90, 5, torch.bfloat16)
    z = block_krylov_svd(w0, w0.clone(), 8, start_block(90, 10), max_steps=10, tol=1e-6)
    assert z.converged and z.residual == 0.0 and z.steps == 1
    assert torch.all(z.S == 0)
    assert_orthonormal(z.U)
    assert_orthonormal(z.V)


def test_bf16_weights_within_the_fp32_floor():
    """bf16 weights (fp32 products): angles within the Wedin bound of the residual plus the
    products' rounding, and within 1e-3 degree of the float64 SVD of the stored values."""
    w = gaussian(500, 400, 6, torch.bfloat16)
    k = 20
    u, s, v = oracle(w)
    r = block_krylov_svd(
        None, w, k, start_block(400, 10), max_steps=40, tol=RESIDUAL_TOL, exact_fraction=1.0
    )
    assert r.converged and not r.exact
    bound = (r.residual + 2.0**-23) * float(s[0]) / float(s[k - 1] - s[k])
    assert sine(r.U, u[:, :k]) <= bound and sine(r.V, v[:, :k]) <= bound
    assert max(max_deg(r.U, u[:, :k]), max_deg(r.V, v[:, :k])) < 1e-3
    torch.testing.assert_close(r.S, s[:k], rtol=1e-6, atol=0)


@pytest.mark.parametrize("k", [1, 2])
def test_small_k(k):
    w = gaussian(300, 200, 7)
    u, s, v = oracle(w)
    r = block_krylov_svd(
        None, w, k, start_block(200, 4), max_steps=60, tol=1e-9, exact_fraction=1.0
    )
    assert r.converged and r.S.shape == (k,) and r.U.shape == (300, k) and r.V.shape == (200, k)
    torch.testing.assert_close(r.S, s[:k], rtol=1e-12, atol=0)
    assert sine(r.V, v[:, :k]) <= r.residual * float(s[0]) / float(s[k - 1] - s[k])


@pytest.mark.parametrize("k", [150, 199, 200])
def test_k_near_min_dimension_is_exact(k):
    """A block a quarter of the space or more: the exact Gram path answers (0 steps)."""
    w = gaussian(300, 200, 8)
    u, s, v = oracle(w)
    r = block_krylov_svd(None, w, k, start_block(200, min(k + 10, 200)), max_steps=30)
    assert r.exact and r.converged and r.steps == 0 and r.dim == 200
    torch.testing.assert_close(r.S, s[:k], rtol=1e-9, atol=0)
    if k < 200:
        assert max_deg(r.V, v[:, :k]) < 1e-6
    assert_orthonormal(r.U, 1e-10)
    assert_orthonormal(r.V, 1e-10)


@pytest.mark.parametrize(("fraction", "steps"), [(1.0, 3), (0.5, 2)])
def test_exact_finish_when_the_basis_would_cover_the_space(fraction, steps):
    """Gaussian 300 x 200, k = 40 with blocks of 45: the basis would pass the space left for
    a block (fraction 1: after 3 blocks) or half the space (the default: after 2) before
    the residual test passes, and the exact Gram path finishes after the steps run."""
    w = gaussian(300, 200, 9)
    _, s, v = oracle(w)
    r = block_krylov_svd(
        None, w, 40, start_block(200, 45), max_steps=30, tol=1e-12, exact_fraction=fraction
    )
    assert r.exact and r.steps == steps and r.residual == 0.0 and r.converged
    torch.testing.assert_close(r.S, s[:40], rtol=1e-9, atol=0)
    assert max_deg(r.V, v[:, :40]) < 1e-6


def test_thick_restart_keeps_converging():
    """With the basis capped at 5 blocks (thick restart onto the top Ritz vectors) the same
    gapless problem still converges to the oracle, in more steps."""
    w = gaussian(400, 300, 10)
    k = 10
    _, s, v = oracle(w)
    free = block_krylov_svd(None, w, k, start_block(300, 12), max_steps=60, tol=1e-8)
    capped = block_krylov_svd(
        None, w, k, start_block(300, 12), max_steps=200, tol=1e-8, max_dim=60,
        exact_fraction=1.0,
    )  # fmt: skip
    assert free.converged and capped.converged and capped.dim <= 60
    assert capped.steps > free.steps
    torch.testing.assert_close(capped.S, s[:k], rtol=1e-12, atol=0)
    assert sine(capped.V, v[:, :k]) <= 1e-8 * float(s[0]) / float(s[k - 1] - s[k])
    with pytest.raises(ValueError, match="max_dim"):
        block_krylov_svd(None, w, k, start_block(300, 12), max_steps=3, max_dim=30)


def test_one_sided_extraction_is_exact_for_low_rank():
    """Rank 5 < b: one step's one-sided extraction (U^T A) recovers it; the two-sided one
    (Ritz values of A on a random 15-dimensional V) does not."""
    rng = np.random.default_rng(11)
    u = np.linalg.qr(rng.standard_normal((200, 5)))[0]
    v = np.linalg.qr(rng.standard_normal((150, 5)))[0]
    sv = np.array([3.0, 2.0, 1.5, 1.0, 0.5])
    w = torch.from_numpy((u * sv) @ v.T)
    one = block_krylov_svd(None, w, 5, start_block(150, 15), max_steps=1, one_sided=True)
    two = block_krylov_svd(None, w, 5, start_block(150, 15), max_steps=1)
    torch.testing.assert_close(one.S, torch.from_numpy(sv), rtol=1e-12, atol=0)
    assert sine(one.V, torch.from_numpy(v)) < 1e-12
    assert float((two.S - torch.from_numpy(sv)).abs().max()) > 1e-2


# ---------------------------------------------------------------------------------------
# the callers: top_subspaces (cold and warm), randomized_svd, subspace_rotation


def gapless_pair(m: int, n: int, dtype):
    """W0 Gaussian; W1 = W0 + a rank-4 update of 1% plus bf16-sized noise (the synthetic
    checkpoints' pairs), stored in ``dtype``."""
    w0 = gaussian(m, n, 12)
    g = torch.Generator().manual_seed(13)
    upd = torch.linalg.qr(torch.randn(m, 4, generator=g, dtype=torch.float64)).Q
    upd = upd @ torch.linalg.qr(torch.randn(n, 4, generator=g, dtype=torch.float64)).Q.T
    noise = 1e-4 * torch.randn(m, n, generator=g, dtype=torch.float64)
    w1 = w0 + 0.01 * float(torch.linalg.matrix_norm(w0, ord=2)) * upd + noise
    return w0.to(dtype), w1.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_subspace_rotation_gapless_pair_matches_oracle(dtype):
    """The issue's case: gapless W0 and W1, rotation of the top-k subspaces within 1e-3
    degree of the float64 oracle (subspace iteration missed such angles by tens of degrees)."""
    w0, w1 = gapless_pair(900, 700, dtype)
    k = 12
    u0, s0, v0 = oracle(w0)
    u1, s1, v1 = oracle(w1)
    assert float(s0[k - 1] / s0[k]) < 1.03 and float(s1[k - 1] / s1[k]) < 1.03
    res = subspace_rotation(w0, w1, k, exact_threshold=0)
    assert res.converged
    for got, a, b in ((res.left, u0, u1), (res.right, v0, v1)):
        ref = np.rad2deg(sla.subspace_angles(a[:, :k].numpy(), b[:, :k].numpy()))
        assert got.max_deg == pytest.approx(ref.max(), abs=1e-3)
        assert got.mean_deg == pytest.approx(ref.mean(), abs=1e-3)
    assert res.iterations > 0  # W1's Krylov steps


def test_randomized_svd_default_is_converged_krylov():
    """randomized_svd's default (power_iters=None) on a gapless difference: every top-k
    value to 1e-9 and the subspaces within 1e-3 degree (float64 oracle of the difference)."""
    w0, w1 = gapless_pair(900, 700, torch.float64)
    g = torch.Generator().manual_seed(14)
    w1 = w1 + 0.02 * torch.randn(900, 700, generator=g, dtype=torch.float64)  # gapless dW
    k = 12
    u, s, vh = randomized_svd(w0, w1, k, seed=0, exact_threshold=0)
    uo, so, vo = oracle(w1 - w0)
    assert float(so[k - 1] / so[k]) < 1.03
    torch.testing.assert_close(s, so[:k], rtol=1e-9, atol=0)
    assert max_deg(u, uo[:, :k]) < 1e-3 and max_deg(vh.T, vo[:, :k]) < 1e-3
    # A fixed depth q runs q + 1 blocks: more depth, smaller error.
    errs = []
    for q in (1, 3, 6):
        _, sq, _ = randomized_svd(w0, w1, k, power_iters=q, seed=0, exact_threshold=0)
        errs.append(float(((sq - so[:k]).abs() / so[:k]).max()))
    assert errs[0] > errs[1] > errs[2]
