"""The ``cupy`` backend: ``csrc/cuda/diff_stats_kernels.cuh`` compiled at run time by NVRTC.

For wheels built without nvcc. The kernel source is the one the ``cuda`` backend's nvcc
build uses, and the launch plan below mirrors ``csrc/cuda/diff_stats_cuda.cu`` (kernel
choice, grid sizes, workspace layout); both builds use ``--fmad=false``, so the two
backends return the same bits. NVRTC needs about a second per kernel, so each kernel is
compiled into its own module on first use (cupy keeps the binaries in its disk cache).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import threading
from pathlib import Path

import torch

from paramgeom import _dtypes, _layout
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw

# Mirrors of csrc/cuda/diff_stats_cuda.h and the static_asserts of diff_stats_kernels.cuh.
THREADS = 256
BLOCKS_PER_SM = 4
DIFF_ACCUM_BYTES = 8 * (_layout.NUM_COUNTS + _layout.NUM_SUMS)
PARTIAL_ROW_BYTES = 24

_DTYPE_NAMES = {
    _dtypes.FLOAT32: "f32",
    _dtypes.BFLOAT16: "bf16",
    _dtypes.FLOAT16: "f16",
    _dtypes.FLOAT8_E4M3: "f8e4m3",
    _dtypes.FLOAT8_E5M2: "f8e5m2",
}


class _Params(ctypes.Structure):
    """``paramgeom::DiffStatsParams``, passed to the kernel by value."""

    _fields_ = [
        ("n_rel", ctypes.c_int),
        ("n_abs", ctypes.c_int),
        ("cast_bf16", ctypes.c_int),
        ("changed_index", ctypes.c_int),
        ("rel_tols", ctypes.c_double * _layout.MAX_TOLS),
        ("abs_tols", ctypes.c_double * _layout.MAX_TOLS),
    ]


assert ctypes.sizeof(_Params) == 144


def _params(job: DiffStatsJob) -> _Params:
    p = _Params(
        n_rel=len(job.rel_tols),
        n_abs=len(job.abs_tols),
        cast_bf16=int(job.cast_bf16),
        changed_index=job.changed_index,
    )
    p.rel_tols[: p.n_rel] = job.rel_tols
    p.abs_tols[: p.n_abs] = job.abs_tols
    return p


def _num_groups(rows: int, cols: int) -> int:
    return -(-rows * cols // _layout.GROUP_ELEMS)


def workspace_bytes(rows: int, cols: int, per_row: bool) -> int:
    """Device workspace of one call: a DiffAccum per group (+ 2 PartialRow slots per group)."""
    groups = _num_groups(rows, cols)
    return groups * DIFF_ACCUM_BYTES + (2 * groups * PARTIAL_ROW_BYTES if per_row else 0)


def num_blocks(rows: int, cols: int, sm_count: int) -> int:
    """Blocks of the main pass (``diff_stats_cuda_num_blocks``)."""
    return min(_num_groups(rows, cols), max(sm_count, 1) * BLOCKS_PER_SM)


def fixup_blocks(rows: int, cols: int, sm_count: int) -> int:
    """Blocks of the per-row fix-up (``diff_stats_cuda_fixup_blocks``)."""
    return min(-(-_num_groups(rows, cols) // THREADS), max(sm_count, 1) * BLOCKS_PER_SM)


def _kernel_id(dtype: int, cast_bf16: bool, n_rel: int, n_abs: int) -> tuple[int, bool, bool]:
    # Rounding to bf16 only changes fp32 and fp16 values (bf16 and fp8 values are bf16 values).
    cast = cast_bf16 and dtype in (_dtypes.FLOAT32, _dtypes.FLOAT16)
    tols8 = n_rel > 1 or n_abs > 1
    return dtype * 4 + 2 * cast + tols8, cast, tols8


def kernel_name(dtype: int, cast_bf16: bool, n_rel: int, n_abs: int) -> str:
    """Name of the main-pass kernel (``diff_stats_cuda_kernel_name``)."""
    _, cast, tols8 = _kernel_id(dtype, cast_bf16, n_rel, n_abs)
    return (
        f"paramgeom_diff_stats_{_DTYPE_NAMES[dtype]}"
        + ("_cast" if cast else "")
        + ("_tols8" if tols8 else "")
    )


def _source_paths() -> tuple[Path, Path] | None:
    """(kernel source, include dir): the installed copy, else the source tree's."""
    candidates = []
    try:
        installed = importlib.resources.files("paramgeom") / "_csrc"
        candidates.append(
            (Path(str(installed / "diff_stats_kernels.cuh")), Path(str(installed / "include")))
        )
    except Exception:  # an odd package loader only loses this candidate
        pass
    csrc = Path(__file__).resolve().parents[3] / "csrc"
    candidates.append((csrc / "cuda" / "diff_stats_kernels.cuh", csrc / "include"))
    for kernel, include in candidates:
        if kernel.is_file() and (include / "paramgeom" / "diff_stats.h").is_file():
            return kernel, include
    return None


@functools.cache
def _source() -> tuple[str, str]:
    """(code, include dir). The code starts with a digest of the headers it includes: cupy
    keys its binary cache on the code and options only, not on included files."""
    paths = _source_paths()
    if paths is None:
        raise RuntimeError("paramgeom cupy backend: diff_stats_kernels.cuh not found")
    kernel, include = paths
    digest = hashlib.sha256()
    for header in sorted((include / "paramgeom").glob("*.h")):
        digest.update(header.read_bytes())
    code = f"// paramgeom headers sha256 {digest.hexdigest()}\n" + kernel.read_text()
    return code, str(include)


def nvrtc_options(kid: int) -> tuple[str, ...]:
    """NVRTC options for the module of main kernel ``kid`` (cupy adds ``-arch``)."""
    return ("--std=c++17", f"-I{_source()[1]}", "--fmad=false", f"-DPG_DIFF_STATS_ONLY={kid}")


def main_kernels() -> list[tuple[int, str]]:
    """Every main-pass kernel as (id, name): each dtype, cast where it changes values, and
    the one-tolerance and up-to-8-tolerance variants."""
    out = []
    for dtype in _DTYPE_NAMES:
        for cast in (False, True):
            for n_tols in (1, 2):
                kid, cast_used, _ = _kernel_id(dtype, cast, n_tols, 0)
                if cast == cast_used:
                    out.append((kid, kernel_name(dtype, cast, n_tols, 0)))
    return out


FINAL = "paramgeom_diff_stats_final"
FIXUP = "paramgeom_diff_stats_rows_fixup"

_lock = threading.Lock()
_functions: dict[tuple[int, str], object] = {}


def _function(device_index: int, kid: int, name: str):
    """Kernel ``name`` loaded on ``device_index`` (the current device): a cupy Function,
    compiled from the module of main kernel ``kid`` (which also holds the final and fix-up
    kernels) on first use; cupy keeps the binary in its disk cache."""
    import cupy

    with _lock:
        key = (device_index, name)
        if key not in _functions:
            module = cupy.RawModule(code=_source()[0], options=nvrtc_options(kid))
            _functions[key] = module.get_function(name).kernel
        return _functions[key]


@functools.cache
def status() -> tuple[bool, str]:
    """``(usable, reason)``: cupy, its NVRTC, the kernel source, a driver and a GPU; the
    reason says why not, or what runs. Never raises."""
    try:
        try:
            import cupy
        except ImportError:
            return False, "cupy not installed"
        if _source_paths() is None:
            return False, "kernel source paramgeom/_csrc/diff_stats_kernels.cuh not installed"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # cupy raises its own CUDARuntimeError
            return False, f"no CUDA driver or no GPU visible to cupy: {exc}"
        if count == 0:
            return False, "no GPU"
        try:
            major, minor = cupy.cuda.nvrtc.getVersion()
        except Exception as exc:
            return False, f"NVRTC unavailable to cupy: {exc}"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (a CPU-only torch build?)"
        return True, f"NVRTC {major}.{minor} run-time build (cupy {cupy.__version__})"
    except Exception as exc:  # status() must never raise
        return False, f"status check failed: {type(exc).__name__}: {exc}"


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def _buffers(job: DiffStatsJob, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(counts, sums, row_changed, row_sq_delta, workspace) for one call. Row outputs start
    at zero: rows of zero columns are never written by a kernel."""
    counts = torch.empty(_layout.NUM_COUNTS, dtype=torch.int64, device=device)
    sums = torch.empty(_layout.NUM_SUMS, dtype=torch.float64, device=device)
    row_changed = row_sq_delta = None
    if job.per_row:
        row_changed = torch.zeros(job.rows, dtype=torch.int64, device=device)
        row_sq_delta = torch.zeros(job.rows, dtype=torch.float64, device=device)
    nbytes = workspace_bytes(job.rows, job.cols, job.per_row)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
    return counts, sums, row_changed, row_sq_delta, workspace


def _plan(job, sm_count, counts, sums, row_changed, row_sq_delta, workspace) -> list:
    """The launches of one call, in stream order, as ``diff_stats_cuda`` makes them:
    (kernel name, blocks, kernel arguments as ctypes values in parameter order)."""
    rows, cols = job.rows, job.cols
    groups = _num_groups(rows, cols)
    base = workspace.data_ptr()
    partials = ctypes.c_void_p(base or None)
    slots = ctypes.c_void_p(base + groups * DIFF_ACCUM_BYTES if job.per_row and groups else None)
    i64 = ctypes.c_longlong
    plan = []
    if groups:
        name = kernel_name(job.dtype_code, job.cast_bf16, len(job.rel_tols), len(job.abs_tols))
        main_args = [_ptr(job.w0), _ptr(job.w1), i64(rows), i64(cols), i64(job.w0.stride(0))]
        main_args += [i64(job.w1.stride(0)), _params(job), partials, slots]
        main_args += [_ptr(row_changed), _ptr(row_sq_delta)]
        plan.append((name, num_blocks(rows, cols, sm_count), main_args))
        if job.per_row:
            fixup_args = [slots, i64(rows), i64(cols), _ptr(row_changed), _ptr(row_sq_delta)]
            plan.append((FIXUP, fixup_blocks(rows, cols, sm_count), fixup_args))
    plan.append((FINAL, 1, [partials, i64(groups), _ptr(counts), _ptr(sums)]))
    return plan


def _param_array(args: list) -> ctypes.Array:
    """cuLaunchKernel's kernelParams: one pointer per argument value."""
    return (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    """Run one fused pass on the device of ``job.w0`` (on its current torch stream)."""
    import cupy

    device = job.w0.device
    index = device.index if device.index is not None else torch.cuda.current_device()
    kid, _, _ = _kernel_id(job.dtype_code, job.cast_bf16, len(job.rel_tols), len(job.abs_tols))
    with torch.cuda.device(index), cupy.cuda.Device(index):
        counts, sums, row_changed, row_sq_delta, workspace = _buffers(job, device)
        stream = torch.cuda.current_stream(device).cuda_stream
        sm_count = torch.cuda.get_device_properties(index).multi_processor_count
        plan = _plan(job, sm_count, counts, sums, row_changed, row_sq_delta, workspace)
        for name, blocks, args in plan:
            # Launched through the driver: the DiffStatsParams struct goes by value, which
            # cupy's own argument conversion does not offer across versions.
            function = _function(index, kid, name)
            params = _param_array(args)
            cupy.cuda.driver.launchKernel(
                function.ptr, blocks, 1, 1, THREADS, 1, 1, 0, stream, ctypes.addressof(params), 0
            )
    return DiffStatsRaw(
        counts=counts.cpu(), sums=sums.cpu(), row_changed=row_changed, row_sq_delta=row_sq_delta
    )
