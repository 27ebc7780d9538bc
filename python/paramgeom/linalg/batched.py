"""Spectra, subspaces and principal angles of many small matrices at once.

A mixture-of-experts checkpoint holds tens of thousands of expert matrices; DESIGN.md
"Checkpoints" asks for them to be computed in batches over the expert axis, never one Python
iteration per matrix. These functions take ``(B, m, n)`` stacks and do the work with batched
float64 products and decompositions (``torch.bmm``, batched ``eigh``/``qr``/``svdvals``): the
exact path of :func:`paramgeom.linalg.randomized_svd` (Gram of the smaller side) for every
matrix of the stack in one call. Meant for matrices with ``min(m, n)`` up to a few thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "BatchedRotation",
    "batched_principal_angles",
    "batched_rotation",
    "batched_svdvals",
    "batched_top_bases",
]


def _check_stack(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name} must be a 3-D (B, m, n) tensor, got {getattr(x, 'shape', x)}")


def _gram(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Float64 Gram of the smaller side of each matrix; True when it is ``x^T x`` (n x n)."""
    right = x.shape[-1] <= x.shape[-2]
    return (x.mT @ x if right else x @ x.mT), right


def batched_svdvals(x: torch.Tensor) -> torch.Tensor:
    """All singular values of each matrix of a ``(B, m, n)`` stack: ``(B, min(m, n))`` float64,
    descending, from the eigenvalues of the float64 Gram of the smaller side.

    Accuracy as the exact path of :func:`~paramgeom.linalg.randomized_svd`: a singular value
    ``s_i`` carries a relative error of about ``eps * (s_1 / s_i)^2`` (eps = 2.2e-16).
    """
    _check_stack(x, "x")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[0] == 0:
        return torch.zeros(x.shape[0], min(x.shape[1], x.shape[2]), dtype=torch.float64)
    g, _ = _gram(x.to(torch.float64))
    ev = torch.linalg.eigvalsh(g).clamp_min(0.0)
    return ev.flip(-1).sqrt()


def batched_top_bases(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` left bases ``(B, m, k)``, singular values ``(B, k)`` and right bases
    ``(B, n, k)`` of a ``(B, m, n)`` stack, float64 (float64 Gram of the smaller side)."""
    _check_stack(w, "w")
    w = w.to(torch.float64)
    g, right = _gram(w)
    ev, vec = torch.linalg.eigh(g)  # ascending
    top = vec.flip(-1)[..., :k]
    s = ev.flip(-1)[..., :k].clamp_min(0.0).sqrt()
    # The other side's basis by one product and a QR: the span of W V_k is the top-k left
    # subspace whenever s_k > 0, and QR keeps it orthonormal when some s_i are tiny.
    other = torch.linalg.qr(w @ top if right else w.mT @ top).Q
    # Contiguous: one memory layout however the bases were made (computed here or read
    # back from a cache), so the products that use them sum in one order.
    other, s, top = other.contiguous(), s.contiguous(), top.contiguous()
    return (other, s, top) if right else (top, s, other)


def batched_principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the spans of orthonormal ``(B, n, k)``
    bases, float64, with the sine form below 45 degrees, as
    :func:`~paramgeom.linalg.principal_angles` does for one pair (Knyazev-Argentati split)."""
    _check_stack(a, "a")
    _check_stack(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    m = a.mT @ b
    cos = torch.linalg.svdvals(m).clamp(0.0, 1.0)  # descending
    # Via the R factor: same values, and independent of the thread count (see subspaces.py).
    sin = torch.linalg.svdvals(torch.linalg.qr(b - a @ m, mode="r").R).clamp(0.0, 1.0).flip(-1)
    angles = torch.where(cos * cos >= 0.5, torch.arcsin(sin), torch.arccos(cos))
    return torch.sort(angles, dim=-1).values


@dataclass(frozen=True)
class BatchedRotation:
    """Per matrix of a stack: principal angles (radians, ``(B, k)``) of the top-k left and
    right singular subspaces of W0 and W1, and the top-k singular values of each."""

    k: int
    left: torch.Tensor
    right: torch.Tensor
    s0: torch.Tensor
    s1: torch.Tensor

    def degrees(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Max and mean angle in degrees per matrix, ``side`` 'left' or 'right'."""
        deg = torch.rad2deg(self.left if side == "left" else self.right)
        return deg.max(dim=-1).values, deg.mean(dim=-1)

    def spectral_drift(self) -> torch.Tensor:
        """``||s(W1) - s(W0)|| / ||s(W0)||`` over the top-k values, per matrix (NaN for W0 = 0)."""
        num = torch.linalg.vector_norm(self.s1 - self.s0, dim=-1)
        den = torch.linalg.vector_norm(self.s0, dim=-1)
        return torch.where(den > 0, num / den, torch.full_like(num, float("nan")))


def batched_rotation(
    w0: torch.Tensor,
    w1: torch.Tensor,
    k: int,
    base: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> BatchedRotation:
    """DESIGN.md "Subspace rotation" for every matrix of a ``(B, m, n)`` pair of stacks:
    exact top-``k`` subspaces of W0 and W1 (float64 Gram of the smaller side, batched eigh)
    and their principal angles. Paper: k = 512; rotation OPD ~1 deg, SFT > 10, RLVR < 0.5.
    ``base``: W0's :func:`batched_top_bases` computed before (one base, many tuned
    checkpoints), used instead of computing them again."""
    _check_stack(w0, "w0")
    _check_stack(w1, "w1")
    if w0.shape != w1.shape:
        raise ValueError(f"shape mismatch: {tuple(w0.shape)} vs {tuple(w1.shape)}")
    p = min(w0.shape[1], w0.shape[2])
    if not 1 <= k <= p:
        raise ValueError(f"k must be in [1, {p}], got {k}")
    u0, s0, v0 = batched_top_bases(w0, k) if base is None else base
    u1, s1, v1 = batched_top_bases(w1, k)
    left = batched_principal_angles(u0, u1)
    right = batched_principal_angles(v0, v1)
    return BatchedRotation(k, left, right, s0, s1)
