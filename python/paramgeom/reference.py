"""Plain-torch float64 references: they *define* what every kernel computes.

Each ``<op>_ref`` is written for clarity, not speed; tests and benchmarks import them and
keep no copies. The ``torch`` backend runs the same element rule in bounded-memory chunks.
"""

from __future__ import annotations

import math

import torch

from paramgeom import _contract
from paramgeom.results import DiffStats


def decode_ref(w: torch.Tensor, cast: str | None) -> torch.Tensor:
    """Exact float64 values of ``w`` (after rounding to bf16, round-to-nearest-even, when
    ``cast == "bf16"``, as the paper compares checkpoints)."""
    x = w.to(torch.float32)
    if cast == "bf16":
        x = x.to(torch.bfloat16).to(torch.float32)
    return x.to(torch.float64)


def decode_scaled_ref(
    q: torch.Tensor, scale: torch.Tensor, row0: int = 0, col0: int = 0
) -> torch.Tensor:
    """Float64 values of block-scaled fp8 ``q`` (a 2-D block of the weight whose top-left
    element is weight element ``(row0, col0)``): ``float32(q) * scale[row // 128, col // 128]``
    formed in float32 and rounded to bf16, as the paper compares checkpoints (DESIGN.md
    "Checkpoints": DeepSeek-style 128 x 128 block scales)."""
    block = _contract.SCALE_BLOCK
    rows = torch.arange(row0, row0 + q.shape[0], device=q.device) // block
    cols = torch.arange(col0, col0 + q.shape[1], device=q.device) // block
    s = scale.to(device=q.device, dtype=torch.float32)[rows][:, cols]
    return (q.to(torch.float32) * s).to(torch.bfloat16).to(torch.float64)


def diff_stats_terms_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    rel_tols: tuple[float, ...],
    abs_tols: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and sums (``paramgeom._contract`` order) of float64 tensors ``a`` (w0) and ``b`` (w1).

    The element rule of DESIGN.md contract 1: equal means ``a == b``; a pair is within
    relative tolerance eta when both are finite and ``|b - a| <= eta * max(|a|, |b|)`` (the
    paper's rule); sums and the max run over finite pairs only.
    """
    a = a.reshape(-1)
    b = b.reshape(-1)
    d = b - a
    ad = d.abs()
    m = torch.maximum(a.abs(), b.abs())
    fin0 = a.abs() < torch.inf
    fin1 = b.abs() < torch.inf
    fin = fin0 & fin1
    counts = torch.zeros(_contract.NUM_COUNTS, dtype=torch.int64)
    counts[_contract.COUNT] = a.numel()
    counts[_contract.EQUAL] = int((a == b).sum())
    counts[_contract.NONFINITE0] = int((~fin0).sum())
    counts[_contract.NONFINITE1] = int((~fin1).sum())
    for i, eta in enumerate(rel_tols):
        counts[_contract.REL0 + i] = int((fin & (ad <= eta * m)).sum())
    for i, tol in enumerate(abs_tols):
        counts[_contract.ABS0 + i] = int((fin & (ad <= tol)).sum())
    zero = torch.zeros((), dtype=torch.float64, device=a.device)
    sums = torch.zeros(_contract.NUM_SUMS, dtype=torch.float64)
    sums[_contract.SUM_SQ_DELTA] = float(torch.where(fin, d * d, zero).sum())
    sums[_contract.SUM_SQ_W0] = float(torch.where(fin, a * a, zero).sum())
    sums[_contract.SUM_SQ_W1] = float(torch.where(fin, b * b, zero).sum())
    sums[_contract.SUM_W0W1] = float(torch.where(fin, a * b, zero).sum())
    sums[_contract.MAX_ABS_DELTA] = float(torch.where(fin, ad, zero).max()) if a.numel() else 0.0
    return counts, sums


def diff_rows_ref(
    a: torch.Tensor, b: torch.Tensor, rel_tols: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of 2-D float64 tensors: the count of elements *not* unchanged (under
    ``rel_tols[0]``, or under equality when there is no relative tolerance) and the sum of
    squared deltas over finite pairs."""
    d = b - a
    fin = (a.abs() < torch.inf) & (b.abs() < torch.inf)
    if rel_tols:
        unchanged = fin & (d.abs() <= rel_tols[0] * torch.maximum(a.abs(), b.abs()))
    else:
        unchanged = a == b
    changed = (a.shape[1] - unchanged.sum(dim=1)).to(torch.int64)
    zero = torch.zeros((), dtype=torch.float64, device=d.device)
    return changed, torch.where(fin, d * d, zero).sum(dim=1)


def diff_stats_ref(
    w0: torch.Tensor,
    w1: torch.Tensor,
    rel_tols: tuple[float, ...] = (1e-3,),
    abs_tols: tuple[float, ...] = (),
    cast: str | None = None,
    per_row: bool = False,
) -> DiffStats:
    """Reference for :func:`paramgeom.diff_stats` (same arguments, same result type)."""
    rel_tols = tuple(float(t) for t in rel_tols)
    abs_tols = tuple(float(t) for t in abs_tols)
    a = decode_ref(w0, cast)
    b = decode_ref(w1, cast)
    counts, sums = diff_stats_terms_ref(a, b, rel_tols, abs_tols)
    row_changed = row_sq = None
    if per_row:
        row_shape = tuple(w0.shape[:-1])
        cols = w0.shape[-1] if w0.dim() else 1
        a2 = a.reshape(math.prod(row_shape), cols)
        row_changed, row_sq = diff_rows_ref(a2, b.reshape(a2.shape), rel_tols)
        row_changed = row_changed.reshape(row_shape)
        row_sq = row_sq.reshape(row_shape)
    return DiffStats(
        numel=int(counts[_contract.COUNT]),
        n_equal=int(counts[_contract.EQUAL]),
        rel_tols=rel_tols,
        n_within_rel=tuple(int(counts[_contract.REL0 + i]) for i in range(len(rel_tols))),
        abs_tols=abs_tols,
        n_within_abs=tuple(int(counts[_contract.ABS0 + i]) for i in range(len(abs_tols))),
        sum_sq_delta=float(sums[_contract.SUM_SQ_DELTA]),
        sum_sq_w0=float(sums[_contract.SUM_SQ_W0]),
        sum_sq_w1=float(sums[_contract.SUM_SQ_W1]),
        sum_w0w1=float(sums[_contract.SUM_W0W1]),
        max_abs_delta=float(sums[_contract.MAX_ABS_DELTA]),
        n_nonfinite_w0=int(counts[_contract.NONFINITE0]),
        n_nonfinite_w1=int(counts[_contract.NONFINITE1]),
        backend="reference",
        row_changed=row_changed,
        row_sq_delta=row_sq,
    )


def diff_matmul_ref(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool = False
) -> torch.Tensor:
    """Reference for :func:`paramgeom.diff_matmul` (DESIGN.md contract 3), in float64.

    ``(w1 - w0) @ x``, or ``(w1 - w0)^T @ x`` with ``transpose``, with every input widened
    exactly to float64 except ``x``, which is first rounded to float32 as the kernels read
    it. Returns float64.
    """
    d = w1.to(torch.float64) - w0.to(torch.float64)
    if transpose:
        d = d.T
    return d @ x.to(torch.float32).to(torch.float64)


def gram_update_ref(
    G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None = None, alpha: float = 1.0
) -> torch.Tensor:
    """Reference for :func:`paramgeom.gram_update` (DESIGN.md contract 2), in float64.

    Returns a new float64 tensor ``G + alpha * (x - x0)^T (x - x0)`` (``x0 is None`` means
    zero); ``G`` itself is left unchanged.
    """
    d = x.to(torch.float64)
    if x0 is not None:
        d = d - x0.to(torch.float64)
    return G.to(torch.float64) + alpha * (d.T @ d)
