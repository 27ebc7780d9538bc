"""The ``cupy`` backend: ``csrc/cuda/diff_stats_kernels.cuh`` compiled at run time by NVRTC.

For wheels built without nvcc. The kernel source is the one the ``cuda`` backend's nvcc
build uses, and the launch plan below mirrors ``csrc/cuda/diff_stats_cuda.cu`` (kernel
choice, grid sizes, workspace layout); both builds use ``--fmad=false``, so the two
backends return the same bits. NVRTC needs about a second per kernel, so each kernel is
compiled into its own module on first use, once per process.

The modules are compiled by NVRTC directly (cupy's binding of it) with exactly the options
of :func:`full_nvrtc_options`, and loaded as PTX by ``cupy.cuda.function.Module``, not built
by ``cupy.RawModule``: RawModule appends ``-ftz=true`` after the caller's options and NVRTC
takes the last one, so subnormal fp16 / fp8 / bf16 / fp32 inputs would count as zero (the
decoders form subnormal fp32 values and scale them, and every ``.f32`` instruction would
flush them; FP8 checkpoints hold many subnormals). tests/test_nvrtc_compile.py compiles with
the same options and checks the PTX holds no ``.ftz``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.resources
import os
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
    """NVRTC options for the module of main kernel ``kid``, before the target
    (:func:`full_nvrtc_options` adds it and the IEEE modes)."""
    return ("--std=c++17", f"-I{_source()[1]}", "--fmad=false", f"-DPG_DIFF_STATS_ONLY={kid}")


# IEEE arithmetic as in the nvcc build: subnormals kept (no flush to zero), correctly
# rounded division and square root. Stated explicitly, so no default can change them.
_IEEE_OPTIONS = ("-ftz=false", "-prec-div=true", "-prec-sqrt=true")


def full_nvrtc_options(options: tuple[str, ...], arch: str) -> tuple[str, ...]:
    """Every option NVRTC gets for a module: ``options``, the IEEE modes and the virtual
    target ``compute_<arch>`` (PTX, compiled for the device by its driver)."""
    return (*options, *_IEEE_OPTIONS, f"--gpu-architecture=compute_{arch}")


def _nvrtc():
    """cupy's NVRTC binding (cupy_backends.cuda.libs.nvrtc)."""
    from cupy_backends.cuda.libs import nvrtc

    return nvrtc


def _compile_module(code: str, options: tuple[str, ...], name: str):
    """``code`` compiled by NVRTC with exactly ``full_nvrtc_options(options, arch of the
    current device)``, loaded as a ``cupy.cuda.function.Module``."""
    import cupy
    from cupy.cuda import function

    nvrtc = _nvrtc()
    arch = str(cupy.cuda.Device().compute_capability)
    opts = full_nvrtc_options(options, arch)
    key = hashlib.sha256("\0".join((code, *opts, repr(nvrtc.getVersion()))).encode()).hexdigest()
    cached = _ptx_cache_dir() / f"{key}.ptx"
    try:
        ptx = cached.read_bytes()
    except OSError:
        ptx = _nvrtc_ptx(nvrtc, code, opts, name)
        _save_quietly(cached, ptx)
    module = function.Module()
    module.load(ptx)
    return module


def _nvrtc_ptx(nvrtc, code: str, opts: tuple[str, ...], name: str) -> bytes:
    prog = nvrtc.createProgram(code, name, (), ())
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(
                f"paramgeom cupy backend: NVRTC failed on {name}: {exc}\n{log}"
            ) from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx if isinstance(ptx, bytes) else ptx.encode()


def _ptx_cache_dir() -> Path:
    """Where compiled PTX is kept between processes, keyed by source, options and NVRTC
    version (``$PARAMGEOM_CACHE_DIR/nvrtc``, else ``$XDG_CACHE_HOME/paramgeom/nvrtc``, else
    ``~/.cache/paramgeom/nvrtc``)."""
    root = os.environ.get("PARAMGEOM_CACHE_DIR")
    if root:
        return Path(root) / "nvrtc"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "paramgeom" / "nvrtc"


def _save_quietly(path: Path, data: bytes) -> None:
    """Write through a temporary name and a rename; a cache that cannot be written is only
    a cache (the next process compiles again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


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
    kernels) on first use (PTX kept in the disk cache of :func:`_compile_module`)."""
    with _lock:
        key = (device_index, name)
        if key not in _functions:
            module = _compile_module(_source()[0], nvrtc_options(kid), f"diff_stats_{kid}.cu")
            _functions[key] = module.get_function(name)
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


# ---------------------------------------------------------------------------------------
# Linear algebra (DESIGN.md kernels 2 and 3; contracts in job.py): the kernels of
# csrc/cuda/diff_matmul_kernels.cuh and gram_update_kernels.cuh, compiled by NVRTC one
# kernel per module, launched with the plan of csrc/cuda/linalg_cuda.cu (mirrored here from
# paramgeom/linalg_tiles.h; a test compares the two).

LINALG_THREADS = 256
LINALG_TILE_P, LINALG_TILE_Q, LINALG_TILE_R = 128, 64, 32
LINALG_TARGET_BLOCKS = 256
LINALG_MIN_SPLIT_STEPS = 8
LINALG_MAX_GRID_YZ = 65535
# Epilogue modes (paramgeom::linalg::Epilogue).
STORE, PARTIAL, ACCUMULATE32, ACCUMULATE64 = 0, 1, 2, 3

DIFF_MATMUL_SOURCE = "diff_matmul_kernels.cuh"
GRAM_UPDATE_SOURCE = "gram_update_kernels.cuh"
DIFF_MATMUL_FINAL = "paramgeom_diff_matmul_final"
GRAM_UPDATE_FINAL = "paramgeom_gram_update_final"
_LINALG_DTYPES = {_dtypes.FLOAT32: "f32", _dtypes.BFLOAT16: "bf16", _dtypes.FLOAT16: "f16"}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def linalg_plan(P: int, Q: int, R: int) -> tuple[int, int, int, int]:
    """(tiles_p, tiles_q, splits, tiles_per_split) of C (P x Q) = A (P x R) B (R x Q)
    (``paramgeom::linalg::split_plan``)."""
    tiles_p, tiles_q = _cdiv(P, LINALG_TILE_P), _cdiv(Q, LINALG_TILE_Q)
    steps = _cdiv(R, LINALG_TILE_R)
    tiles = tiles_p * tiles_q
    want = _cdiv(LINALG_TARGET_BLOCKS, tiles) if tiles > 0 else 1
    want = max(1, min(want, steps // LINALG_MIN_SPLIT_STEPS, LINALG_MAX_GRID_YZ))
    per = _cdiv(steps, want)
    return tiles_p, tiles_q, (_cdiv(steps, per) if per > 0 else 1), per


def _split_bytes(P: int, Q: int, R: int) -> int:
    splits = linalg_plan(P, Q, R)[2]
    return splits * P * Q * 4 if splits > 1 else 0


def diff_matmul_workspace_bytes(m: int, n: int, k: int, transpose: bool) -> int:
    return _split_bytes(n, k, m) if transpose else _split_bytes(m, k, n)


def gram_update_workspace_bytes(r: int, n: int) -> int:
    return _split_bytes(n, n, r)


def linalg_final_blocks(P: int, Q: int) -> int:
    return min(max(_cdiv(P * Q, LINALG_THREADS), 1), 1 << 16)


def diff_matmul_kernel_id(dtype: int, transpose: bool) -> int:
    return dtype * 2 + int(bool(transpose))


def diff_matmul_kernel_name(dtype: int, transpose: bool) -> str:
    return f"paramgeom_diff_matmul_{_LINALG_DTYPES[dtype]}" + ("_t" if transpose else "")


def gram_update_kernel_name(dtype: int) -> str:
    return f"paramgeom_gram_update_{_LINALG_DTYPES[dtype]}"


def linalg_kernels() -> list[tuple[str, int, str, str]]:
    """Every linear-algebra kernel as (source file, id, name, final kernel of its module)."""
    out = []
    for dtype in _LINALG_DTYPES:
        for transpose in (False, True):
            kid = diff_matmul_kernel_id(dtype, transpose)
            name = diff_matmul_kernel_name(dtype, transpose)
            out.append((DIFF_MATMUL_SOURCE, kid, name, DIFF_MATMUL_FINAL))
    for dtype in _LINALG_DTYPES:
        out.append((GRAM_UPDATE_SOURCE, dtype, gram_update_kernel_name(dtype), GRAM_UPDATE_FINAL))
    return out


@functools.cache
def linalg_source(filename: str) -> str:
    """The code of one linear-algebra kernel file (installed copy, else the source tree's),
    prefixed with a digest of the paramgeom headers (cupy's cache keys on the code only)."""
    paths = _source_paths()
    if paths is None:
        raise RuntimeError("paramgeom cupy backend: kernel sources not found")
    kernel = paths[0].parent / filename
    if not kernel.is_file():
        raise RuntimeError(f"paramgeom cupy backend: {filename} not found")
    digest = hashlib.sha256()
    for header in sorted((paths[1] / "paramgeom").glob("*.h")):
        digest.update(header.read_bytes())
    return f"// paramgeom headers sha256 {digest.hexdigest()}\n" + kernel.read_text()


def linalg_nvrtc_options(filename: str, kid: int) -> tuple[str, ...]:
    """NVRTC options of the module holding kernel ``kid`` of ``filename``, before the target
    (:func:`full_nvrtc_options`)."""
    macro = "PG_DIFF_MATMUL_ONLY" if filename == DIFF_MATMUL_SOURCE else "PG_GRAM_UPDATE_ONLY"
    return ("--std=c++17", f"-I{_source()[1]}", "--fmad=false", f"-D{macro}={kid}")


_linalg_functions: dict[tuple[int, str], object] = {}


def _linalg_function(device_index: int, filename: str, kid: int, name: str):
    """Kernel ``name`` of the module of kernel ``kid`` of ``filename``, on the current device."""
    with _lock:
        key = (device_index, name)
        if key not in _linalg_functions:
            module = _compile_module(
                linalg_source(filename), linalg_nvrtc_options(filename, kid), filename
            )
            _linalg_functions[key] = module.get_function(name)
        return _linalg_functions[key]


def linalg_plan_launches(
    kernel: str,
    final: str,
    a1,
    a0,
    lda1: int,
    lda0: int,
    b1,
    b0,
    ldb1: int,
    ldb0: int,
    P: int,
    Q: int,
    R: int,
    out,
    ldo: int,
    mode: int,
    alpha: float,
    workspace,
) -> list:
    """The launches of ``linalg_cuda.cu``'s ``launch``, in stream order: (kernel name, grid,
    kernel arguments as ctypes values). Tensors may be None (null pointers)."""
    if P == 0 or Q == 0:
        return []
    tiles_p, tiles_q, splits, per = linalg_plan(P, Q, R)
    i64, f64 = ctypes.c_longlong, ctypes.c_double
    split = splits > 1
    target = workspace if split else out
    main = [_ptr(a1), _ptr(a0), i64(lda1), i64(lda0), _ptr(b1), _ptr(b0), i64(ldb1), i64(ldb0)]
    main += [i64(P), i64(Q), i64(R), i64(per), _ptr(target), i64(ldo)]
    main += [ctypes.c_int(PARTIAL if split else mode), f64(alpha)]
    plan = [(kernel, (tiles_p, tiles_q, splits), main)]
    if split:
        fin = [_ptr(workspace), i64(splits), i64(P), i64(Q), _ptr(out), i64(ldo)]
        fin += [ctypes.c_int(mode), f64(alpha)]
        plan.append((final, (linalg_final_blocks(P, Q), 1, 1), fin))
    return plan


def _run_linalg(device: torch.device, filename: str, kid: int, plan: list) -> None:
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index), cupy.cuda.Device(index):
        stream = torch.cuda.current_stream(device).cuda_stream
        for name, grid, args in plan:
            function = _linalg_function(index, filename, kid, name)
            params = _param_array(args)
            cupy.cuda.driver.launchKernel(
                function.ptr, *grid, LINALG_THREADS, 1, 1, 0, stream, ctypes.addressof(params), 0
            )


def diff_matmul(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``), the same kernels as ``cuda``."""
    code = _dtypes.dtype_code(w0.dtype)
    m, n = w0.shape
    k = x.shape[1]
    P, R = (n, m) if transpose else (m, n)
    workspace = torch.empty(
        diff_matmul_workspace_bytes(m, n, k, transpose), dtype=torch.uint8, device=w0.device
    )
    plan = linalg_plan_launches(
        diff_matmul_kernel_name(code, transpose),
        DIFF_MATMUL_FINAL,
        w1,
        w0,
        w1.stride(0),
        w0.stride(0),
        x,
        None,
        k,
        0,
        P,
        k,
        R,
        out,
        k,
        STORE,
        1.0,
        workspace,
    )
    _run_linalg(w0.device, DIFF_MATMUL_SOURCE, diff_matmul_kernel_id(code, transpose), plan)


def gram_update(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> None:
    """In place ``G += alpha * (x - x0)^T (x - x0)`` (G float32 or float64)."""
    code = _dtypes.dtype_code(x.dtype)
    r, n = x.shape
    if r == 0:
        return
    ld0 = 0 if x0 is None else x0.stride(0)
    mode = ACCUMULATE64 if G.dtype == torch.float64 else ACCUMULATE32
    workspace = torch.empty(gram_update_workspace_bytes(r, n), dtype=torch.uint8, device=x.device)
    plan = linalg_plan_launches(
        gram_update_kernel_name(code),
        GRAM_UPDATE_FINAL,
        x,
        x0,
        x.stride(0),
        ld0,
        x,
        x0,
        x.stride(0),
        ld0,
        n,
        n,
        r,
        G,
        n,
        mode,
        float(alpha),
        workspace,
    )
    _run_linalg(x.device, GRAM_UPDATE_SOURCE, code, plan)
