"""The ``torch`` backend: the float64 reference rule, run in bounded-memory row chunks on
any device. Slow but always available; it is what the other backends are checked against.
"""

from __future__ import annotations

import torch

from paramgeom import _dtypes, _layout
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw
from paramgeom.reference import decode_ref, diff_rows_ref, diff_stats_terms_ref

# Elements per chunk: float64 temporaries of this many elements (~8 of them live at once).
_CHUNK_ELEMS = 1 << 22

_FROM_CODE = {code: dtype for dtype, code in _dtypes._CODES.items()}


def status() -> tuple[bool, str]:
    return True, f"pure torch {torch.__version__} (float64 reference rule)"


def _merge(counts, sums, c, s) -> None:
    counts += c
    sums[: _layout.MAX_ABS_DELTA] += s[: _layout.MAX_ABS_DELTA]
    sums[_layout.MAX_ABS_DELTA] = max(sums[_layout.MAX_ABS_DELTA], s[_layout.MAX_ABS_DELTA])


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    dtype = _FROM_CODE[job.dtype_code]
    cast = "bf16" if job.cast_bf16 else None
    w0 = job.w0.view(dtype)
    w1 = job.w1.view(dtype)
    rows, cols = job.rows, job.cols
    counts = torch.zeros(_layout.NUM_COUNTS, dtype=torch.int64)
    sums = torch.zeros(_layout.NUM_SUMS, dtype=torch.float64)
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
            a = decode_ref(w0[r0:r1, c0:c1], cast)
            b = decode_ref(w1[r0:r1, c0:c1], cast)
            c, s = diff_stats_terms_ref(a, b, job.rel_tols, job.abs_tols)
            _merge(counts, sums, c, s)
            if job.per_row:
                changed, sq = diff_rows_ref(a, b, job.rel_tols)
                row_changed[r0:r1] += changed
                row_sq[r0:r1] += sq
    return DiffStatsRaw(counts, sums, row_changed, row_sq)
