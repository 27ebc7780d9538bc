"""The ``cpu`` backend: the C++/OpenMP kernels of ``paramgeom._C`` on CPU tensors."""

from __future__ import annotations

import functools

import torch

from paramgeom import _layout, _native
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw


@functools.cache
def status() -> tuple[bool, str]:
    module, why = _native.load("_C")
    if module is None:
        return False, f"paramgeom._C {why}"
    return True, f"C++/OpenMP, {module.best_isa()}, {module.max_threads()} threads"


def diff_stats(job: DiffStatsJob, *, num_threads: int | None = None, isa: str = "") -> DiffStatsRaw:
    """Run the OpenMP kernel; ``num_threads`` defaults to ``torch.get_num_threads()``."""
    module, why = _native.load("_C")
    if module is None:
        raise RuntimeError(f"cpu backend unavailable: paramgeom._C {why}")
    counts = torch.zeros(_layout.NUM_COUNTS, dtype=torch.int64)
    sums = torch.zeros(_layout.NUM_SUMS, dtype=torch.float64)
    row_changed = row_sq = None
    if job.per_row:
        row_changed = torch.empty(job.rows, dtype=torch.int64)
        row_sq = torch.empty(job.rows, dtype=torch.float64)
    module.diff_stats(
        job.w0,
        job.w1,
        dtype=job.dtype_code,
        rel_tols=list(job.rel_tols),
        abs_tols=list(job.abs_tols),
        cast_bf16=job.cast_bf16,
        changed_index=job.changed_index,
        counts=counts,
        sums=sums,
        row_changed=row_changed,
        row_sq_delta=row_sq,
        num_threads=torch.get_num_threads() if num_threads is None else num_threads,
        isa=isa,
    )
    return DiffStatsRaw(counts, sums, row_changed, row_sq)
