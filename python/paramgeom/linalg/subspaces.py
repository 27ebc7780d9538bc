"""Top singular subspaces of one matrix, principal angles, and the subspace-rotation metric.

DESIGN.md "Metrics", **Subspace rotation** (arXiv 2606.07082: OPD rotates its top-k singular
subspaces by ~1 degree, SFT by > 10, RLVR by < 0.5; paper k = 512): top-k left and right
singular subspaces of W0 and W1, principal angles from ``cos(theta_i) = sigma_i(U0^T U1)``
computed in float64 with the sine form ``sigma_i((I - U0 U0^T) U1)`` for small angles, max
and mean angle in degrees. W1 is a small perturbation of W0, so W1's subspace is found by a
block Krylov iteration (:mod:`paramgeom.linalg.krylov`) seeded with W0's.

Weights are read only through :mod:`paramgeom.linalg._ops` (a single matrix is the
difference with a zero base).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paramgeom.linalg.krylov import RESIDUAL_TOL, block_krylov_svd
from paramgeom.linalg.randomized_svd import (
    check_k,
    check_matrix,
    exact_svd,
    gaussian,
    generator,
)

__all__ = [
    "PrincipalAngles",
    "SubspaceRotation",
    "TopSubspaces",
    "principal_angles",
    "subspace_rotation",
    "top_subspaces",
]


# Default stop test of the iteration: the largest relative Ritz residual of the top k,
# max_i ||w^T u_i - s_i v_i|| / s_1 (sin theta <= SUBSPACE_TOL * s_1 / (s_k - s_{k+1})).
SUBSPACE_TOL = RESIDUAL_TOL


@dataclass(frozen=True)
class TopSubspaces:
    """Top-k singular triplets of a matrix; unpacks as ``U, S, V = result``.

    ``U`` (m, k), ``S`` (k,) descending, ``V`` (n, k) (columns, not ``Vh``), all float64.
    ``iterations`` is the number of block Krylov steps run (each reads the matrix twice; 0
    for the exact path), ``delta`` the largest relative Ritz residual of the top k at the
    end, ``max_i ||w^T u_i - s_i v_i|| / s_1`` (0 on the exact path), and ``converged``
    whether ``delta <= tol``. The residual bounds the subspace error: ``sin theta <= delta *
    s_1 / (s_k - s_{k+1})`` for the left and the right top-k subspace (Wedin).
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    iterations: int
    converged: bool
    delta: float

    def __iter__(self):
        return iter((self.U, self.S, self.V))


@dataclass(frozen=True)
class PrincipalAngles:
    """Principal angles between two subspaces: ``angles`` (float64 radians, ascending) and
    their largest and mean values in degrees."""

    angles: torch.Tensor
    max_deg: float
    mean_deg: float


@dataclass(frozen=True)
class SubspaceRotation:
    """DESIGN.md "Subspace rotation" of a weight pair: principal angles between the top-k left
    (``left``) and right (``right``) singular subspaces of W0 and W1, with the warm-started
    iteration count and convergence of W1's subspace."""

    k: int
    left: PrincipalAngles
    right: PrincipalAngles
    iterations: int
    converged: bool


def top_subspaces(
    w: torch.Tensor,
    k: int,
    init: torch.Tensor | None = None,
    iters: int = 30,
    tol: float = SUBSPACE_TOL,
    oversample: int = 10,
    exact_threshold: int = 4096,
    seed: int | None = 0,
) -> TopSubspaces:
    """Top-``k`` left and right singular subspaces of one matrix ``w`` (m x n), float64.

    DESIGN.md "Metrics", Subspace rotation: W1's top-k subspace is best found by an
    iteration started from W0's instead of a cold SVD.

    Without ``init``: the exact path (float64 Gram of the smaller side, as
    :func:`randomized_svd`) when ``min(m, n) <= exact_threshold``, else the block Krylov
    method of :func:`paramgeom.linalg.krylov.block_krylov_svd` (block Lanczos with full
    reorthogonalisation and Rayleigh-Ritz) from a seeded Gaussian block of ``k + oversample``
    columns. With ``init`` (an ``(n, l)`` basis, ``l >= k``, e.g. W0's right singular
    vectors): the same method with ``init`` as the start block, padded with Gaussian columns
    to ``k + oversample`` when narrower, so W0's subspace seeds W1's Krylov space. Each step
    reads ``w`` twice; the iteration stops once every top-k Ritz triplet has a relative
    residual ``||w^T u_i - s_i v_i|| / s_1 <= tol`` or after ``iters`` steps. Should the
    basis pass half of ``min(m, n)`` first (or two blocks already do), the exact Gram path
    answers instead: from there it is the cheaper of the two (``delta`` 0).

    Accuracy: the residual bounds the error whatever the spectrum (Wedin): the top-k
    subspaces are within ``sin theta <= tol * s_1 / (s_k - s_{k+1})`` of the true ones and
    the singular values within about ``(tol * s_1)^2 / (s_k - s_{k+1})``. Gaussian 1024 x 1024
    matrices (``s_k / s_{k+1} - 1 ~ 0.003`` at k = 64) need about 10 blocks of 74 for
    ``tol = 1e-6``, most of the space (so they end on the exact path).
    With fp32 kernel products residuals below about ``1e-7`` are rounding: keep ``tol`` above
    that. Check ``converged``.

    Returns
    -------
    TopSubspaces
        ``U`` (m, k), ``S`` (k,), ``V`` (n, k) float64; unpacks as ``U, S, V``;
        ``iterations`` the block steps run, ``delta`` the final relative residual.
    """
    check_matrix(w, "w")
    m, n = int(w.shape[0]), int(w.shape[1])
    check_k(k, m, n)
    p = min(m, n)
    gen = generator(seed)
    if init is None and p <= exact_threshold:
        u, s, vh = exact_svd(None, w, k, seed=0 if seed is None else seed)
        return TopSubspaces(u, s, vh.T.contiguous(), 0, True, 0.0)
    l = min(k + oversample, p)
    if init is None:
        start = gaussian(n, l, gen, w.device)
    else:
        check_matrix(init, "init")
        if init.shape[0] != n or init.shape[1] < k or init.shape[1] > p:
            raise ValueError(
                f"init must have shape (n, l) = ({n}, l) with k = {k} <= l <= {p}, "
                f"got {tuple(init.shape)}"
            )
        start = init.to(device=w.device, dtype=torch.float64)
        if start.shape[1] < l:
            start = torch.cat([start, gaussian(n, l - start.shape[1], gen, w.device)], dim=1)
    r = block_krylov_svd(
        None, w, k, start, max_steps=iters, tol=tol, seed=0 if seed is None else seed
    )
    return TopSubspaces(r.U, r.S, r.V, r.steps, r.converged, r.residual)


def principal_angles(a: torch.Tensor, b: torch.Tensor, k: int | None = None) -> PrincipalAngles:
    """Principal angles between the column spans of orthonormal bases ``a`` and ``b``.

    DESIGN.md "Metrics", Subspace rotation: ``cos(theta_i) = sigma_i(A^T B)``, computed in
    float64 with the sine formulation ``sin(theta_i) = sigma_i((I - A A^T) B)`` for small
    angles. ``arccos`` of a cosine near 1 loses everything below about ``sqrt(eps)`` radians
    (1e-8 in float64, 3e-4 in float32), so angles with ``cos^2 >= 1/2`` (below 45 degrees) come
    from ``arcsin`` of the sines and the rest from ``arccos`` of the cosines (the split of
    Knyazev and Argentati, SIAM J. Sci. Comput. 23(6), 2002).

    Parameters
    ----------
    a, b : torch.Tensor
        ``(n, p)`` and ``(n, q)`` with orthonormal columns (not checked; orthonormalise
        first, e.g. with QR, if they are not). Any float dtype; computed in float64.
    k : int, optional
        Use only the first ``k`` columns of each (the top-k subspaces).

    Returns
    -------
    PrincipalAngles
        ``min(p, q)`` angles in radians, ascending, with max and mean in degrees.
    """
    check_matrix(a, "a")
    check_matrix(b, "b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > min(a.shape[1], b.shape[1]):
            raise ValueError(f"k = {k} exceeds the bases' widths {a.shape[1]}, {b.shape[1]}")
        a, b = a[:, :k], b[:, :k]
    a = a.to(dtype=torch.float64)
    b = b.to(dtype=torch.float64, device=a.device)
    if a.shape[1] < b.shape[1]:
        a, b = b, a  # a is the wider: (I - A A^T) B then has exactly min(p, q) singular values
    r = min(a.shape[1], b.shape[1])
    if r == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=a.device)
        return PrincipalAngles(empty, 0.0, 0.0)
    m = a.T @ b
    cos = torch.linalg.svdvals(m).clamp(0.0, 1.0)  # descending -> angles ascending
    # Singular values of the small R factor (the same as of the tall residual): LAPACK's
    # SVD of a tall matrix varies in the last bit with the thread count, its QR does not,
    # and reports must not depend on how many threads (or torchrun ranks) ran them. R alone
    # (mode "r"): the same R, without forming Q (0.04 s against 0.13 s at 6880 x 320).
    sin = torch.linalg.svdvals(torch.linalg.qr(b - a @ m, mode="r").R).clamp(0.0, 1.0).flip(0)
    angles = torch.where(cos * cos >= 0.5, torch.arcsin(sin), torch.arccos(cos))
    angles = torch.sort(angles).values
    deg = torch.rad2deg(angles)
    return PrincipalAngles(angles, float(deg.max()), float(deg.mean()))


def subspace_rotation(
    w0: torch.Tensor,
    w1: torch.Tensor,
    k: int,
    iters: int = 30,
    tol: float = SUBSPACE_TOL,
    oversample: int = 10,
    exact_threshold: int = 4096,
    seed: int | None = 0,
) -> SubspaceRotation:
    """DESIGN.md "Subspace rotation" of a weight pair: max and mean principal angles (degrees)
    between the top-``k`` left and the top-``k`` right singular subspaces of W0 and W1.

    W0's top ``k + oversample`` subspace is found cold (:func:`top_subspaces`: exact Gram
    path when ``min(m, n) <= exact_threshold``); W1's by subspace iteration warm-started from
    it (``iters``, ``tol`` as in :func:`top_subspaces`). Angles by :func:`principal_angles`
    (float64, sine form for small angles). Paper: k = 512; rotation OPD ~1 deg, SFT > 10 deg,
    RLVR < 0.5 deg.
    """
    check_matrix(w0, "w0")
    check_matrix(w1, "w1")
    if w0.shape != w1.shape:
        raise ValueError(
            f"shape mismatch: w0 has shape {tuple(w0.shape)}, w1 has shape {tuple(w1.shape)}"
        )
    m, n = int(w0.shape[0]), int(w0.shape[1])
    check_k(k, m, n)
    l = min(k + oversample, min(m, n))
    r0 = top_subspaces(w0, l, exact_threshold=exact_threshold, iters=iters, tol=tol, seed=seed)
    r1 = top_subspaces(w1, k, init=r0.V, iters=iters, tol=tol, oversample=oversample, seed=seed)
    left = principal_angles(r0.U[:, :k], r1.U)
    right = principal_angles(r0.V[:, :k], r1.V)
    return SubspaceRotation(k, left, right, r1.iterations, r1.converged)
