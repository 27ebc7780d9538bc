"""The ``cupy`` backend: the CUDA kernels of ``csrc/cuda`` compiled at run time by NVRTC.

For wheels built without nvcc. The kernel sources are the ones the ``cuda`` backend's nvcc
build uses, and every launch decision (kernel choice, grids, workspace layout, the packed
``DiffStatsParams``) is read from ``paramgeom/launch_plan.h`` through the always-built CPU
module ``paramgeom._C``, the plan the nvcc launchers follow; both builds use
``--fmad=false``, so the two backends return the same bits. NVRTC needs about a second per
kernel, so each kernel is compiled into its own module on first use, once per process (and
kept as PTX on disk).

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
from types import ModuleType

import torch

from paramgeom import _contract, _dtypes, _native
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw


def _plans() -> ModuleType:
    """paramgeom._C, where the launch plans live; RuntimeError when it did not load."""
    module, why = _native.load("_C")
    if module is None:
        raise RuntimeError(
            f"paramgeom cupy backend: the launch plans come from paramgeom._C, {why}"
        )
    return module


def _source_paths() -> tuple[Path, Path] | None:
    """(kernel source dir, include dir): the installed copy, else the source tree's."""
    candidates = []
    try:
        installed = importlib.resources.files("paramgeom") / "_csrc"
        candidates.append((Path(str(installed)), Path(str(installed / "include"))))
    except Exception:  # an odd package loader only loses this candidate
        pass
    csrc = Path(__file__).resolve().parents[3] / "csrc"
    candidates.append((csrc / "cuda", csrc / "include"))
    for kernels, include in candidates:
        sources = (kernels / name for name in _contract.CUDA_KERNEL_SOURCES.values())
        if all(p.is_file() for p in sources) and (include / "paramgeom" / "common.h").is_file():
            return kernels, include
    return None


def nvrtc_headers() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, include names) of the in-memory headers NVRTC gets: ``paramgeom/contract.h``
    rendered from :mod:`paramgeom._contract` (the build renders the same text for nvcc)."""
    return (_contract.render_header(),), (_contract.HEADER_NAME,)


@functools.cache
def kernel_code(op: str) -> str:
    """The kernel source of ``op`` (``_contract.CUDA_KERNEL_SOURCES``), prefixed with a digest
    of the headers it may include: the PTX cache keys on the code and options."""
    paths = _source_paths()
    if paths is None:
        raise RuntimeError("paramgeom cupy backend: the CUDA kernel sources are not installed")
    kernels, include = paths
    digest = hashlib.sha256()
    for header in sorted((include / "paramgeom").glob("*.h")):
        digest.update(header.read_bytes())
    for text in nvrtc_headers()[0]:
        digest.update(text.encode())
    code = (kernels / _contract.CUDA_KERNEL_SOURCES[op]).read_text()
    return f"// paramgeom headers sha256 {digest.hexdigest()}\n" + code


def nvrtc_options(op: str, kid: int) -> tuple[str, ...]:
    """NVRTC options of the module holding kernel ``kid`` of ``op`` (only that main kernel,
    plus its op's final / fix-up kernels: ``-DPG_<OP>_ONLY=<id>``), before the target
    (:func:`full_nvrtc_options` adds it and the IEEE modes)."""
    paths = _source_paths()
    if paths is None:
        raise RuntimeError("paramgeom cupy backend: the CUDA kernel sources are not installed")
    return ("--std=c++17", f"-I{paths[1]}", "--fmad=false", f"-DPG_{op.upper()}_ONLY={kid}")


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
    headers, include_names = nvrtc_headers()
    prog = nvrtc.createProgram(code, name, headers, include_names)
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
    """Every diff_stats main-pass kernel as (kernel id, name): each dtype, cast where it
    changes values, and the one-tolerance and up-to-8-tolerance variants."""
    return [tuple(k) for k in _plans().diff_stats_kernels()]


def linalg_kernels() -> list[tuple[str, int, str, str]]:
    """Every linear-algebra kernel as (op, kernel id, name, final kernel of its module)."""
    return [tuple(k) for k in _plans().linalg_kernels()]


_lock = threading.Lock()
_functions: dict[tuple[int, str, int, str], object] = {}


def _function(device_index: int, op: str, kid: int, name: str):
    """Kernel ``name`` of the module of kernel ``kid`` of ``op`` (which also holds the op's
    final / fix-up kernels), loaded on ``device_index`` (the current device): compiled on
    first use, its PTX kept in the disk cache of :func:`_compile_module`."""
    with _lock:
        key = (device_index, op, kid, name)
        if key not in _functions:
            module = _compile_module(kernel_code(op), nvrtc_options(op, kid), f"{op}_{kid}.cu")
            _functions[key] = module.get_function(name)
        return _functions[key]


@functools.cache
def status() -> tuple[bool, str]:
    """``(usable, reason)``: cupy, its NVRTC, the kernel sources, the launch plans of
    paramgeom._C, a driver and a GPU; the reason says why not, or what runs. Never raises."""
    try:
        try:
            import cupy
        except ImportError:
            return False, "cupy not installed"
        if _source_paths() is None:
            return False, "the CUDA kernel sources (paramgeom/_csrc) are not installed"
        if _native.load("_C")[0] is None:
            return False, f"the launch plans come from paramgeom._C, {_native.load('_C')[1]}"
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


def _buffers(job: DiffStatsJob, plan: dict, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(counts, sums, row_changed, row_sq_delta, workspace) for one call. Row outputs start
    at zero: rows of zero columns are never written by a kernel."""
    counts = torch.empty(_contract.NUM_COUNTS, dtype=torch.int64, device=device)
    sums = torch.empty(_contract.NUM_SUMS, dtype=torch.float64, device=device)
    row_changed = row_sq_delta = None
    if job.per_row:
        row_changed = torch.zeros(job.rows, dtype=torch.int64, device=device)
        row_sq_delta = torch.zeros(job.rows, dtype=torch.float64, device=device)
    workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8, device=device)
    return counts, sums, row_changed, row_sq_delta, workspace


def diff_stats_plan(job: DiffStatsJob, sm_count: int) -> dict:
    """The launch plan of one call (``paramgeom._C.diff_stats_plan``)."""
    return _plans().diff_stats_plan(
        job.rows,
        job.cols,
        job.per_row,
        dtype=job.dtype_code,
        cast_bf16=job.cast_bf16,
        n_rel=len(job.rel_tols),
        n_abs=len(job.abs_tols),
        sm_count=sm_count,
        scaled=job.scaled,
    )


def _scales_bytes(job: DiffStatsJob) -> bytes:
    """``paramgeom::BlockScales`` as the main kernel takes it by value (packed by
    ``paramgeom._C``); all zero for an unscaled job."""
    if not job.scaled:
        return _plans().diff_stats_scales(0, 0, 0, 0, 0)

    def row_stride(grid: torch.Tensor) -> int:
        return grid.stride(0) if grid.shape[0] > 1 else 0

    return _plans().diff_stats_scales(
        job.scale0.data_ptr(),
        job.scale1.data_ptr(),
        row_stride(job.scale0),
        row_stride(job.scale1),
        job.scale_row0,
    )


def diff_stats_launches(job, plan, counts, sums, row_changed, row_sq_delta, workspace) -> list:
    """The launches of one call, in stream order, as ``diff_stats_cuda`` makes them:
    (kernel name, grid, kernel arguments as ctypes values in parameter order)."""
    rows, cols, groups = job.rows, job.cols, plan["groups"]
    base = workspace.data_ptr()
    partials = ctypes.c_void_p(base or None)
    slots = ctypes.c_void_p(base + plan["slots_offset"] if job.per_row and groups else None)
    i64 = ctypes.c_longlong
    params = ctypes.create_string_buffer(
        _plans().diff_stats_params(
            list(job.rel_tols),
            list(job.abs_tols),
            cast_bf16=job.cast_bf16,
            changed_index=job.changed_index,
        )
    )
    scales = ctypes.create_string_buffer(_scales_bytes(job))
    launches = []
    if groups:
        main_args = [_ptr(job.w0), _ptr(job.w1), i64(rows), i64(cols), i64(job.w0.stride(0))]
        main_args += [i64(job.w1.stride(0)), params, scales, partials, slots]
        main_args += [_ptr(row_changed), _ptr(row_sq_delta)]
        launches.append((plan["kernel"], (plan["blocks"], 1, 1), main_args))
        if job.per_row:
            fixup_args = [slots, i64(rows), i64(cols), _ptr(row_changed), _ptr(row_sq_delta)]
            launches.append((plan["fixup"], (plan["fixup_blocks"], 1, 1), fixup_args))
    launches.append((plan["final"], (1, 1, 1), [partials, i64(groups), _ptr(counts), _ptr(sums)]))
    return launches


def _param_array(args: list) -> ctypes.Array:
    """cuLaunchKernel's kernelParams: one pointer per argument value."""
    return (ctypes.c_void_p * len(args))(*(ctypes.addressof(a) for a in args))


def _launch(device: torch.device, op: str, kid: int, threads: int, launches: list) -> None:
    """Enqueue ``launches`` on the current torch stream of ``device``. Through the driver:
    DiffStatsParams goes by value, which cupy's own argument conversion does not offer
    across versions."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index), cupy.cuda.Device(index):
        stream = torch.cuda.current_stream(device).cuda_stream
        for name, grid, args in launches:
            function = _function(index, op, kid, name)
            params = _param_array(args)
            cupy.cuda.driver.launchKernel(
                function.ptr, *grid, threads, 1, 1, 0, stream, ctypes.addressof(params), 0
            )


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).multi_processor_count


def diff_stats(job: DiffStatsJob) -> DiffStatsRaw:
    """Run one fused pass on the device of ``job.w0`` (on its current torch stream)."""
    device = job.w0.device
    plan = diff_stats_plan(job, _sm_count(device))
    with torch.cuda.device(device):
        counts, sums, row_changed, row_sq_delta, workspace = _buffers(job, plan, device)
        launches = diff_stats_launches(
            job, plan, counts, sums, row_changed, row_sq_delta, workspace
        )
        _launch(device, "diff_stats", plan["kernel_id"], plan["threads"], launches)
    return DiffStatsRaw(
        counts=counts.cpu(), sums=sums.cpu(), row_changed=row_changed, row_sq_delta=row_sq_delta
    )


# ---------------------------------------------------------------------------------------
# Linear algebra (DESIGN.md kernels 2 and 3; contracts in job.py): the kernels of
# csrc/cuda/diff_matmul_kernels.cuh and gram_update_kernels.cuh, one kernel per module,
# launched by the plan of paramgeom/launch_plan.h (paramgeom._C.diff_matmul_plan /
# gram_update_plan).


def linalg_launches(
    plan: dict, a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, out, ldo, mode, alpha, workspace
) -> list:
    """The launches of ``linalg_cuda.cu``'s ``launch`` for ``plan``, in stream order:
    (kernel name, grid, kernel arguments as ctypes values). Tensors may be None (null)."""
    P, Q, R = plan["P"], plan["Q"], plan["R"]
    if P == 0 or Q == 0:
        return []
    i64, f64 = ctypes.c_longlong, ctypes.c_double
    split = plan["grid"][2] > 1
    target = workspace if split else out
    main = [_ptr(a1), _ptr(a0), i64(lda1), i64(lda0), _ptr(b1), _ptr(b0), i64(ldb1), i64(ldb0)]
    main += [i64(P), i64(Q), i64(R), i64(plan["tiles_per_split"]), _ptr(target), i64(ldo)]
    main += [ctypes.c_int(_contract.PARTIAL if split else mode), f64(alpha)]
    launches = [(plan["kernel"], tuple(plan["grid"]), main)]
    if split:
        fin = [_ptr(workspace), i64(plan["grid"][2]), i64(P), i64(Q), _ptr(out), i64(ldo)]
        fin += [ctypes.c_int(mode), f64(alpha)]
        launches.append((plan["final"], (plan["final_blocks"], 1, 1), fin))
    return launches


def diff_matmul_plan(w0: torch.Tensor, x: torch.Tensor, transpose: bool) -> dict:
    """The launch plan of ``(w1 - w0) @ x`` (``paramgeom._C.diff_matmul_plan``)."""
    m, n = w0.shape
    return _plans().diff_matmul_plan(_dtypes.dtype_code(w0.dtype), m, n, x.shape[1], transpose)


def diff_matmul_launches(plan: dict, w0, w1, x, out, workspace) -> list:
    """The launches of one diff_matmul call (A = w1 - w0, B = x, store into out)."""
    k = x.shape[1]
    return linalg_launches(
        plan, w1, w0, w1.stride(0), w0.stride(0), x, None, k, 0, out, k, _contract.STORE, 1.0,
        workspace,
    )  # fmt: skip


def diff_matmul(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``), the same kernels as ``cuda``."""
    plan = diff_matmul_plan(w0, x, transpose)
    workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8, device=w0.device)
    launches = diff_matmul_launches(plan, w0, w1, x, out, workspace)
    _launch(w0.device, "diff_matmul", plan["kernel_id"], plan["threads"], launches)


def gram_update_plan(x: torch.Tensor) -> dict:
    """The launch plan of ``G += alpha (x - x0)^T (x - x0)`` (``_C.gram_update_plan``)."""
    r, n = x.shape
    return _plans().gram_update_plan(_dtypes.dtype_code(x.dtype), r, n)


def gram_update_launches(plan: dict, G, x, x0, alpha: float, workspace) -> list:
    """The launches of one gram_update call (A = (x - x0)^T, B = x - x0, added into G)."""
    n = x.shape[1]
    ld0 = 0 if x0 is None else x0.stride(0)
    mode = _contract.ACCUMULATE64 if G.dtype == torch.float64 else _contract.ACCUMULATE32
    return linalg_launches(
        plan, x, x0, x.stride(0), ld0, x, x0, x.stride(0), ld0, G, n, mode, float(alpha),
        workspace,
    )  # fmt: skip


def gram_update(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> None:
    """In place ``G += alpha * (x - x0)^T (x - x0)`` (G float32 or float64)."""
    if x.shape[0] == 0:
        return
    plan = gram_update_plan(x)
    workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8, device=x.device)
    launches = gram_update_launches(plan, G, x, x0, alpha, workspace)
    _launch(x.device, "gram_update", plan["kernel_id"], plan["threads"], launches)
