"""Top singular values and right vectors of a difference whose rows are split over ranks.

For the monitor on FSDP2 / DTensor weights sharded by rows (``Shard(0)`` on a 1-D mesh):
rank ``r`` holds rows ``dW_r`` of ``dW = W_1 - W_0`` and nothing of the others. The
products stay local and only small matrices cross ranks, so no rank ever holds the matrix:

* right Gram (``n <= m`` and ``n <= exact_threshold``): ``dW^T dW = sum_r dW_r^T dW_r``, one
  all-reduce of ``n x n``, then the same eigendecomposition as the one-process exact path;
* otherwise the range finder of :func:`paramgeom.linalg.randomized_svd` with the same
  seeded ``Omega``: ``dW Omega`` is row-sharded like ``dW`` and is orthonormalised by TSQR
  (local Householder QR, the ``l x l`` R factors all-gathered and factored again, as stable as
  one QR of the whole); ``dW^T Q = sum_r dW_r^T Q_r`` is one all-reduce of ``n x l``. When
  ``min(m, n) <= exact_threshold`` the range has ``l = min(m, n)`` columns: it spans all of
  ``dW``'s column space, so the values are exact like the one-process Gram path.

Every rank returns the same values and vectors (they come from all-reduced matrices), equal
to the one-process results to rounding (the sums are taken in another order); the vectors'
signs may differ, which no figure depends on (subspaces, ``V V^T``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from paramgeom.linalg import _ops
from paramgeom.linalg.randomized_svd import gaussian, generator, orth

__all__ = ["row_sharded_svd", "tsqr"]


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def tsqr(y: torch.Tensor, group) -> torch.Tensor:
    """This rank's rows of an orthonormal basis of the row-sharded ``y`` (``m_r x l`` here):
    local reduced QR, then the QR of all ranks' ``R`` factors stacked in rank order."""
    m_r, l = y.shape
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    q1, r1 = torch.linalg.qr(y, mode="reduced")  # (m_r x h), (h x l), h = min(m_r, l)
    r_pad = torch.zeros(l, l, dtype=y.dtype, device=y.device)
    r_pad[: r1.shape[0]] = r1
    q_pad = torch.zeros(m_r, l, dtype=y.dtype, device=y.device)
    q_pad[:, : q1.shape[1]] = q1
    stacked = [torch.empty_like(r_pad) for _ in range(world)]
    dist.all_gather(stacked, r_pad, group=group)
    q2 = torch.linalg.qr(torch.cat(stacked), mode="reduced").Q  # (world l x l)
    return q_pad @ q2[rank * l : (rank + 1) * l]


def _product(w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool):
    """``dW_r @ x`` (or ``dW_r^T @ x``) of this rank's rows, float64; empty rows allowed."""
    m_r, n = w1.shape
    if m_r == 0:
        rows = n if transpose else 0
        return torch.zeros(rows, x.shape[1], dtype=torch.float64, device=w1.device)
    return _ops.diff_matmul(w0, w1, x, transpose=transpose)


def row_sharded_svd(
    w0: torch.Tensor,
    w1: torch.Tensor,
    k: int,
    m: int,
    group,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    exact_threshold: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` singular values ``S`` (float64, descending) and right vectors ``V``
    (``n x k`` float64, orthonormal) of ``dW = W_1 - W_0`` whose ``m`` rows are split over
    the ranks of ``group``: ``w0``, ``w1`` are this rank's rows (any count, zero included).
    A collective: every rank of ``group`` calls it with the same ``k``, ``m`` and options."""
    n = w1.shape[1]
    p = min(m, n)
    if n <= m and p <= exact_threshold:
        g = (
            _ops.gram(w0, w1, "right")
            if w1.shape[0]
            else torch.zeros(n, n, dtype=torch.float64, device=w1.device)
        )
        g = _all_reduce(g.to(torch.float64), group)
        g = 0.5 * (g + g.T)
        evals, evecs = torch.linalg.eigh(g)
        s = evals.flip(0)[:k].clamp_min(0.0).sqrt()
        return s, evecs.flip(1)[:, :k].contiguous()
    l = p if p <= exact_threshold else min(k + oversample, p)
    omega = gaussian(n, l, generator(seed), w1.device)
    q = tsqr(_product(w0, w1, omega, False), group)
    for _ in range(power_iters):
        z = orth(_all_reduce(_product(w0, w1, q, True), group))
        q = tsqr(_product(w0, w1, z, False), group)
    bt = _all_reduce(_product(w0, w1, q, True), group)  # (Q^T dW)^T, n x l
    ub, s, _ = torch.linalg.svd(bt, full_matrices=False)
    return s[:k].contiguous(), ub[:, :k].contiguous()
