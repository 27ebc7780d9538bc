"""The ``cuda`` backend: the nvcc-compiled kernels of ``csrc/cuda`` (``paramgeom._C_cuda``).

Wheels built without nvcc have no ``_C_cuda``; the module is imported on first use, and
:func:`status` says why the backend cannot run instead of raising.
"""

from __future__ import annotations

import functools

import torch

from paramgeom import _contract, _native
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
        counts = torch.empty(_contract.NUM_COUNTS, dtype=torch.int64, device=device)
        sums = torch.empty(_contract.NUM_SUMS, dtype=torch.float64, device=device)
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
            scale0=job.scale0,
            scale1=job.scale1,
            scale_row0=job.scale_row0,
        )
    return DiffStatsRaw(
        counts=counts.cpu(), sums=sums.cpu(), row_changed=row_changed, row_sq_delta=row_sq_delta
    )


# ---------------------------------------------------------------------------------------
# Linear algebra (DESIGN.md kernels 2 and 3; contracts in job.py): csrc/cuda/linalg_cuda.h.


def _ext():
    ext, reason = _load()
    if ext is None:
        raise RuntimeError(f"paramgeom cuda backend unavailable: {reason}")
    return ext


def diff_matmul(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``): fp32 SIMT tiles, the difference
    formed in registers; split-K partials summed in fp64 in a fixed order."""
    from paramgeom import _dtypes

    ext = _ext()
    m, n = w0.shape
    device = w0.device
    with torch.cuda.device(device):
        nbytes = ext.diff_matmul_workspace_bytes(m, n, x.shape[1], transpose)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        ext.diff_matmul(
            _dtypes.bits_view(w0),
            _dtypes.bits_view(w1),
            x,
            out,
            dtype=_dtypes.dtype_code(w0.dtype),
            transpose=bool(transpose),
            workspace=workspace,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )


def gram_update(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> None:
    """In place ``G += alpha * (x - x0)^T (x - x0)`` (G float32 or float64)."""
    from paramgeom import _dtypes

    ext = _ext()
    r, n = x.shape
    device = x.device
    with torch.cuda.device(device):
        nbytes = ext.gram_update_workspace_bytes(r, n)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        ext.gram_update(
            G,
            _dtypes.bits_view(x),
            None if x0 is None else _dtypes.bits_view(x0),
            dtype=_dtypes.dtype_code(x.dtype),
            alpha=float(alpha),
            workspace=workspace,
            stream=torch.cuda.current_stream(device).cuda_stream,
        )
