"""Top singular values and right vectors of a difference whose rows are split over ranks.

For the monitor on FSDP2 / DTensor weights sharded by rows (``Shard(0)`` on a 1-D mesh):
rank ``r`` holds rows ``dW_r`` of ``dW = W_1 - W_0`` and nothing of the others. The
products stay local and only small matrices cross ranks, so no rank ever holds the matrix:

* exact (``min(m, n) <= exact_threshold``): for ``n <= m`` the right Gram ``dW^T dW = sum_r
  dW_r^T dW_r``, one all-reduce of ``n x n``, then the same eigendecomposition as the
  one-process exact path; for ``n > m`` the range of ``dW`` from ``l = m`` seeded test
  vectors (it spans all of ``dW``'s column space, so the values are exact too);
* otherwise the block Krylov method of the one-process path
  (:func:`paramgeom.linalg.krylov.block_krylov`, as :func:`~paramgeom.linalg.randomized_svd`
  runs it) on :class:`RowShardedMatrix`: ``dW V`` stays row-sharded like ``dW``, inner
  products over its rows are all-reduced (``b x b`` and smaller), blocks of it are
  orthonormalised by TSQR (local Householder QR, the ``b x b`` R factors gathered and
  factored again, as stable as one QR of the whole), and ``dW^T U = sum_r dW_r^T U_r`` is
  one all-reduce of ``n x b``.

Every rank returns the same values and vectors (every decision and every replicated
quantity comes from all-reduced matrices), equal to the one-process results to rounding
(the sums are taken in another order); the vectors' signs may differ, which no figure
depends on (subspaces, ``V V^T``). Before 2026-12-07 the sharded path ran plain power
iterations where the one-process path ran block Krylov: on a gapless update (Gaussian,
k = 16) their ``s_1`` differed by 1.4-2.2% and Sim_K between the two vector sets was
0.76-0.86.

Every collective is a sum (the ``R`` factors and the ranks' row counts are gathered as sums
of zero-padded blocks), made by a ``sum_ranks`` function: one all-reduce each by default, or
:func:`row_sharded_svds`' lockstep, which coalesces the sums of many matrices into one
all-reduce per round (:mod:`paramgeom.linalg.lockstep`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist

from paramgeom.linalg import _ops
from paramgeom.linalg.krylov import RESIDUAL_TOL, WholeRows, block_krylov, check_norms
from paramgeom.linalg.lockstep import Lockstep, Sum, all_reduce_sum
from paramgeom.linalg.randomized_svd import (
    KRYLOV_MAX_STEPS,
    check_finite,
    gaussian,
    generator,
)

__all__ = ["RowShardedMatrix", "ShardedProblem", "row_sharded_svd", "row_sharded_svds", "tsqr"]


def tsqr(y: torch.Tensor, group, sum_ranks: Sum | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR of the row-sharded ``y`` (``m_r x l`` here): this rank's rows of ``Q`` and
    the ``l x l`` ``R`` (the same on every rank). Local reduced QR, then the QR of all ranks'
    ``R`` factors stacked in rank order (gathered as a sum of zero-padded stacks, so that
    every collective here is a sum: ``sum_ranks`` over the ranks of ``group``, by default
    one all-reduce)."""
    sum_ranks = sum_ranks or functools.partial(all_reduce_sum, group=group)
    m_r, l = y.shape
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    q1, r1 = torch.linalg.qr(y, mode="reduced")  # (m_r x h), (h x l), h = min(m_r, l)
    stacked = torch.zeros(world * l, l, dtype=y.dtype, device=y.device)
    stacked[rank * l : rank * l + r1.shape[0]] = r1
    q_pad = torch.zeros(m_r, l, dtype=y.dtype, device=y.device)
    q_pad[:, : q1.shape[1]] = q1
    q2, r2 = torch.linalg.qr(sum_ranks(stacked), mode="reduced")  # (world l x l), (l x l)
    return q_pad @ q2[rank * l : (rank + 1) * l], r2


def _product(w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool):
    """``dW_r @ x`` (or ``dW_r^T @ x``) of this rank's rows, float64; empty rows allowed."""
    m_r, n = w1.shape
    if m_r == 0:
        rows = n if transpose else 0
        return torch.zeros(rows, x.shape[1], dtype=torch.float64, device=w1.device)
    return _ops.diff_matmul(w0, w1, x, transpose=transpose)


class RowShardedMatrix(WholeRows):
    """``dW = w1 - w0`` whose ``m`` rows are split over the ranks of ``group``, in the
    interface :func:`paramgeom.linalg.krylov.block_krylov` reads (that of
    :class:`~paramgeom.linalg.krylov.WholeMatrix`): ``w0``, ``w1`` are this rank's rows (any
    count, zero included), in rank order. Every method is a collective: all ranks call it
    together, in the same order."""

    def __init__(
        self, w0: torch.Tensor, w1: torch.Tensor, m: int, group, sum_ranks: Sum | None = None
    ) -> None:
        super().__init__(m, w1.device)
        self.w0, self.w1, self.group = w0, w1, group
        self.sum_ranks = sum_ranks or functools.partial(all_reduce_sum, group=group)
        self.shape = (int(m), int(w1.shape[1]))
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        # Every rank's row count, gathered as a sum (exact in float64 below 2^53 rows).
        counts = torch.zeros(world, dtype=torch.float64, device=w1.device)
        counts[rank] = int(w1.shape[0])
        counts = [int(c) for c in self.sum_ranks(counts).tolist()]
        if sum(counts) != m:
            raise ValueError(f"the ranks hold {sum(counts)} rows in all, not m = {m}")
        self.offset = sum(counts[:rank])

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.sum_ranks(a.T @ b)

    def norms(self, y: torch.Tensor) -> torch.Tensor:
        return self.sum_ranks((y * y).sum(dim=0)).sqrt()

    def dot_norms(self, a: torch.Tensor | None, y: torch.Tensor):
        sq = (y * y).sum(dim=0, keepdim=True)
        both = self.sum_ranks(sq if a is None else torch.cat([a.T @ y, sq]))
        return (None if a is None else both[:-1]), both[-1].sqrt()

    def mul_t_dot(self, u: torch.Tensor, y: torch.Tensor):
        n = self.shape[1]
        both = self.sum_ranks(torch.cat([_product(self.w0, self.w1, u, True), u.T @ y]))
        return both[:n], both[n:]

    def qr(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tsqr(y, self.group, self.sum_ranks)

    def gaussian(self, cols: int, gen: torch.Generator) -> torch.Tensor:
        # Every rank draws the whole block (the generators move in step) and keeps its rows:
        # the same block as one process would draw.
        rows = self.w1.shape[0]
        return gaussian(self.size, cols, gen, self.device)[self.offset : self.offset + rows]

    def mul(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        got = _product(self.w0, self.w1, x, transpose)
        return self.sum_ranks(got) if transpose else got

    def exact(self, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact top-``k`` ``(U, S, V)``: ``V``, ``S`` as the module docstring's exact
        path, ``U`` this rank's rows of ``dW v_i / s_i`` (not re-orthonormalised)."""
        s, v = _exact_values(self, k, seed)
        u = self.mul(v)
        return u / torch.where(s > 0, s, torch.ones_like(s)), s, v


def _exact_values(a: RowShardedMatrix, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = a.shape
    if n <= m:
        if a.w1.shape[0]:
            g = _ops.gram(a.w0, a.w1, "right").to(torch.float64)
        else:
            g = torch.zeros(n, n, dtype=torch.float64, device=a.device)
        g = a.sum_ranks(g)
        check_finite(g, "the Gram matrix of w1 - w0")  # all-reduced: every rank decides alike
        evals, evecs = torch.linalg.eigh(0.5 * (g + g.T))
        return evals.flip(0)[:k].clamp_min(0.0).sqrt(), evecs.flip(1)[:, :k].contiguous()
    omega = gaussian(n, m, generator(seed), a.device)
    y = a.mul(omega)
    check_norms(a.norms(y))  # every rank raises alike: one raising alone would hang the rest
    q, _ = a.qr(y)
    bt = a.mul(q, transpose=True)  # (Q^T dW)^T, n x m
    ub, s, _ = torch.linalg.svd(bt, full_matrices=False)
    return s[:k].contiguous(), ub[:, :k].contiguous()


def row_sharded_svd(
    w0: torch.Tensor,
    w1: torch.Tensor,
    k: int,
    m: int,
    group,
    *,
    oversample: int = 10,
    power_iters: int | None = 2,
    seed: int = 0,
    exact_threshold: int = 64,
    sum_ranks: Sum | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` singular values ``S`` (float64, descending) and right vectors ``V``
    (``n x k`` float64, orthonormal) of ``dW = W_1 - W_0`` whose ``m`` rows are split over
    the ranks of ``group``: ``w0``, ``w1`` are this rank's rows (any count, zero included),
    in rank order. A collective: every rank of ``group`` calls it with the same ``k``, ``m``
    and options.

    The options are :func:`~paramgeom.linalg.randomized_svd`'s, with the same meaning and
    the same method: ``power_iters = q`` a block Krylov space of ``q + 1`` blocks of ``k +
    oversample`` seeded Gaussian columns (None: until the relative Ritz residuals of the
    top ``k`` are at most ``1e-6``), the exact path up to ``min(m, n) <= exact_threshold``
    and where the basis would pass half the space. The figures equal the one-process
    ones to rounding. ``sum_ranks``: how a tensor is summed over the ranks (default: one
    all-reduce on ``group``; :func:`row_sharded_svds` passes its lockstep's)."""
    n = int(w1.shape[1])
    p = min(m, n)
    if not 1 <= k <= p:
        raise ValueError(f"k must be in [1, {p}], got {k}")
    if oversample < 0 or (power_iters is not None and power_iters < 0):
        raise ValueError(
            f"oversample and power_iters must be >= 0, got {oversample} and {power_iters}"
        )
    a = RowShardedMatrix(w0, w1, m, group, sum_ranks)
    if p <= exact_threshold:
        return _exact_values(a, k, seed)
    omega = gaussian(n, min(k + oversample, p), generator(seed), w1.device)
    if power_iters is None:
        r = block_krylov(a, k, omega, KRYLOV_MAX_STEPS, tol=RESIDUAL_TOL, seed=seed)
    else:
        r = block_krylov(a, k, omega, power_iters + 1, tol=0.0, seed=seed, one_sided=True)
    return r.S.contiguous(), r.V.contiguous()


ShardedProblem = tuple[torch.Tensor, torch.Tensor, int, int]
"""``(w0, w1, k, m)`` of one :func:`row_sharded_svd`: this rank's rows, ``k``, all rows."""


def row_sharded_svds(
    problems: Sequence[ShardedProblem], group, **options
) -> list[tuple[torch.Tensor, torch.Tensor] | Exception]:
    """:func:`row_sharded_svd` of every ``(w0, w1, k, m)`` in ``problems`` (same
    ``options``), their sums over the ranks coalesced: one all-reduce per round of the
    computations still running (:class:`~paramgeom.linalg.lockstep.Lockstep`) instead of one
    per sum, about 12 in all instead of 12 per matrix. Each result equals the one-at-a-time
    call's (a sum of a longer buffer: on 2 ranks bit for bit); one that raised is its
    exception in the list, on every rank alike. A collective: every rank calls it with the
    same problems' ``k``, ``m`` and shapes' columns, in the same order."""
    lock = Lockstep(group)
    jobs = [functools.partial(_one_problem, problem, group, options) for problem in problems]
    return lock.run(jobs)


def _one_problem(problem: ShardedProblem, group, options: dict, sum_ranks: Sum):
    w0, w1, k, m = problem
    return row_sharded_svd(w0, w1, k, m, group, sum_ranks=sum_ranks, **options)
