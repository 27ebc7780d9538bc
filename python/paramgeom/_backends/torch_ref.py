"""The ``torch`` backend: the float64 reference rule, run in bounded-memory row chunks on
any device. Slow but always available; it is what the other backends are checked against.
"""

from __future__ import annotations

import torch

from paramgeom import _contract, _dtypes
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw
from paramgeom.reference import decode_ref, decode_scaled_ref, diff_rows_ref, diff_stats_terms_ref

# Elements per chunk: float64 temporaries of this many elements (~8 of them live at once).
_CHUNK_ELEMS = 1 << 22

_FROM_CODE = {code: dtype for dtype, code in _dtypes._CODES.items()}


def status() -> tuple[bool, str]:
    return True, f"pure torch {torch.__version__} (float64 reference rule)"


def _merge(counts, sums, c, s) -> None:
    counts += c
    sums[: _contract.MAX_ABS_DELTA] += s[: _contract.MAX_ABS_DELTA]
    sums[_contract.MAX_ABS_DELTA] = max(sums[_contract.MAX_ABS_DELTA], s[_contract.MAX_ABS_DELTA])


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    dtype = _FROM_CODE[job.dtype_code]
    cast = "bf16" if job.cast_bf16 else None
    w0 = job.w0.view(dtype)
    w1 = job.w1.view(dtype)
    rows, cols = job.rows, job.cols
    counts = torch.zeros(_contract.NUM_COUNTS, dtype=torch.int64)
    sums = torch.zeros(_contract.NUM_SUMS, dtype=torch.float64)
    row_changed = row_sq = None
    if job.per_row:
        row_changed = torch.zeros(rows, dtype=torch.int64, device=job.w0.device)
        row_sq = torch.zeros(rows, dtype=torch.float64, device=job.w0.device)
    if rows == 0 or cols == 0:
        return DiffStatsRaw(counts, sums, row_changed, row_sq)
    # Chunks are row blocks, or column blocks of one row when a row alone is too big.
    row_step = max(1, _CHUNK_ELEMS // cols)
    col_step = min(cols, _CHUNK_ELEMS)
    for r0 in range(0, rows, row_step):
        r1 = min(rows, r0 + row_step)
        for c0 in range(0, cols, col_step):
            c1 = min(cols, c0 + col_step)
            if job.scaled:
                row0 = job.scale_row0 + r0
                a = decode_scaled_ref(w0[r0:r1, c0:c1], job.scale0, row0, c0)
                b = decode_scaled_ref(w1[r0:r1, c0:c1], job.scale1, row0, c0)
            else:
                a = decode_ref(w0[r0:r1, c0:c1], cast)
                b = decode_ref(w1[r0:r1, c0:c1], cast)
            c, s = diff_stats_terms_ref(a, b, job.rel_tols, job.abs_tols)
            _merge(counts, sums, c, s)
            if job.per_row:
                changed, sq = diff_rows_ref(a, b, job.rel_tols)
                row_changed[r0:r1] += changed
                row_sq[r0:r1] += sq
    return DiffStatsRaw(counts, sums, row_changed, row_sq)


# ---------------------------------------------------------------------------------------
# Linear algebra (DESIGN.md kernels 2 and 3; contracts in job.py): the float64 rule of
# paramgeom.reference in row chunks of about _CHUNK_ELEMS elements, on any device.


def _chunk_rows(cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, cols))


def _diff64(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    return w1.to(torch.float64) - w0.to(torch.float64)


def diff_matmul(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or the transpose) in float64, rounded once to fp32."""
    m, n = w0.shape
    step = _chunk_rows(n)
    x64 = x.to(torch.float64)
    if not transpose:
        for r0 in range(0, m, step):
            r1 = min(m, r0 + step)
            out[r0:r1] = _diff64(w0[r0:r1], w1[r0:r1]) @ x64
        return
    acc = torch.zeros(n, x.shape[1], dtype=torch.float64, device=out.device)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        acc.addmm_(_diff64(w0[r0:r1], w1[r0:r1]).T, x64[r0:r1])
    out.copy_(acc)


def gram_update(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> None:
    """``G += alpha * (x - x0)^T (x - x0)`` in float64, added to ``G`` with one rounding."""
    r, n = x.shape
    step = _chunk_rows(n)
    acc = torch.zeros(n, n, dtype=torch.float64, device=G.device)
    for r0 in range(0, r, step):
        r1 = min(r, r0 + step)
        d = x[r0:r1].to(torch.float64)
        if x0 is not None:
            d = d - x0[r0:r1].to(torch.float64)
        acc.addmm_(d.T, d)
    # A GEMM's two halves of d^T d may differ in the last bit (subnormal products): the
    # update added is the upper triangle mirrored, exactly symmetric.
    acc.triu_()
    acc += acc.triu(1).T
    if G.dtype == torch.float64:
        G.add_(acc, alpha=alpha)
    else:
        G.add_((acc * alpha).to(G.dtype))
