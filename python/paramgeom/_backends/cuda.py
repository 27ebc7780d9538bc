"""The ``cuda`` backend: the nvcc-compiled kernels of ``csrc/cuda`` (``paramgeom._C_cuda``).

Wheels built without nvcc have no ``_C_cuda``; the module is imported on first use, and
:func:`status` says why the backend cannot run instead of raising.
"""

from __future__ import annotations

import functools

import torch

from paramgeom import _layout, _native
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw

NOT_COMPILED = "not compiled (wheel built without nvcc)"


def _load():
    """(paramgeom._C_cuda, "") or (None, why it is missing)."""
    module, why = _native.load("_C_cuda")
    if module is not None:
        return module, ""
    return None, NOT_COMPILED if why.startswith("not compiled") else f"paramgeom._C_cuda {why}"


@functools.cache
def status() -> tuple[bool, str]:
    """``(usable, reason)``: whether the compiled kernels, a CUDA driver and a GPU are here;
    the reason says why not, or what runs. Never raises."""
    try:
        ext, why = _load()
        if ext is None:
            return False, why
        ok, why = ext.runtime_status()
        if not ok:
            return False, why
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (a CPU-only torch build?)"
        return True, "CUDA kernels compiled by nvcc (paramgeom._C_cuda)"
    except Exception as exc:  # status() must never raise
        return False, f"status check failed: {type(exc).__name__}: {exc}"


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    """Run one fused pass on the device of ``job.w0`` (on its current torch stream)."""
    ext, reason = _load()
    if ext is None:
        raise RuntimeError(f"paramgeom cuda backend unavailable: {reason}")
    device = job.w0.device
    with torch.cuda.device(device):
        counts = torch.empty(_layout.NUM_COUNTS, dtype=torch.int64, device=device)
        sums = torch.empty(_layout.NUM_SUMS, dtype=torch.float64, device=device)
        row_changed = row_sq_delta = None
        if job.per_row:
            row_changed = torch.empty(job.rows, dtype=torch.int64, device=device)
            row_sq_delta = torch.empty(job.rows, dtype=torch.float64, device=device)
        nbytes = ext.workspace_bytes(job.rows, job.cols, job.per_row)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        ext.diff_stats(
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
            row_sq_delta=row_sq_delta,
            workspace=workspace,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
    return DiffStatsRaw(
        counts=counts.cpu(), sums=sums.cpu(), row_changed=row_changed, row_sq_delta=row_sq_delta
    )
