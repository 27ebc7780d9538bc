"""The ``triton`` backend: the kernels of ``paramgeom.triton_kernels`` on CUDA tensors.

With ``TRITON_INTERPRET=1`` set before the kernels are first imported, Triton's interpreter
runs the same kernels on CPU tensors (slowly): that is how the tests exercise them on
machines without a GPU. Nothing here imports triton at module import time, so
``import paramgeom`` works without it.
"""

from __future__ import annotations

import importlib.util
import os

from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw


def _interpret_mode(triton_module) -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET``)."""
    knobs = getattr(triton_module, "knobs", None)
    if knobs is not None:
        try:
            return bool(knobs.runtime.interpret)
        except Exception:  # an older or newer triton without this knob
            pass
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def status() -> tuple[bool, str]:
    """``(usable, reason)`` for this machine; never raises."""
    try:
        import triton
    except Exception:
        return False, "triton not installed"
    try:
        if importlib.util.find_spec("paramgeom.triton_kernels") is None:
            return False, "paramgeom.triton_kernels is missing from this install"
    except Exception as exc:
        return False, f"paramgeom.triton_kernels cannot be found ({exc})"
    version = getattr(triton, "__version__", "?")
    if _interpret_mode(triton):
        return True, (
            f"triton {version} interpreter (TRITON_INTERPRET=1): runs on CPU tensors, "
            "slowly; for testing"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU (set TRITON_INTERPRET=1 to run on CPU tensors for testing)"
        device = torch.cuda.get_device_name()
    except Exception as exc:
        return False, f"no usable CUDA GPU ({exc})"
    return True, f"triton {version} on {device}"


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    """One fused diff-statistics pass with the Triton kernel (CUDA tensors, or CPU tensors
    under ``TRITON_INTERPRET=1``)."""
    from paramgeom.triton_kernels import diff_stats_triton

    counts, sums, row_changed, row_sq_delta = diff_stats_triton(
        job.w0,
        job.w1,
        job.dtype_code,
        job.rel_tols,
        job.abs_tols,
        job.cast_bf16,
        job.per_row,
        scales=(job.scale0, job.scale1) if job.scaled else None,
        scale_row0=job.scale_row0,
    )
    return DiffStatsRaw(
        counts=counts, sums=sums, row_changed=row_changed, row_sq_delta=row_sq_delta
    )


def diff_matmul(w0, w1, x, transpose: bool, out) -> None:
    """``out = (w1 - w0) @ x`` (or the transpose) with the Triton kernel (job.py contract)."""
    from paramgeom.triton_kernels import diff_matmul_triton

    diff_matmul_triton(w0, w1, x, bool(transpose), out)


def gram_update(G, x, x0, alpha: float) -> None:
    """``G += alpha * (x - x0)^T (x - x0)`` with the Triton kernel (job.py contract)."""
    from paramgeom.triton_kernels import gram_update_triton

    gram_update_triton(G, x, x0, float(alpha))
