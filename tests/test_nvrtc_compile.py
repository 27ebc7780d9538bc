"""The cupy backend's run-time build, without a GPU: the installed kernel source compiled
by the real NVRTC library (from the ``nvidia-cuda-nvrtc`` wheel in the [test] extra, or a
CUDA toolkit) with the options the backend passes, for every main kernel.

NVRTC compiles to PTX without a device, so this proves that wheels built without nvcc
ship a source that compiles at run time and exports the kernel names cupy looks up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from pathlib import Path

import pytest

from paramgeom._backends import cupy as cupy_backend


def _find_nvrtc() -> str | None:
    candidates = []
    try:
        import nvidia

        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "cu*", "lib", "libnvrtc.so*")))
            candidates += sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    candidates += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    candidates = [c for c in candidates if "builtins" not in c and "alt" not in Path(c).name]
    return candidates[0] if candidates else None


@pytest.fixture(scope="module")
def nvrtc():
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def _compile(lib, code: str, options: tuple[str, ...]) -> tuple[int, str, str]:
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(
        ctypes.byref(prog), code.encode(), b"diff_stats_kernels.cu", 0, None, None
    )
    assert rc == 0, lib.nvrtcGetErrorString(rc)
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx


def test_installed_source_is_the_one_found():
    paths = cupy_backend._source_paths()
    assert paths is not None, "diff_stats_kernels.cuh is not installed with the package"
    kernel, include = paths
    assert (include / "paramgeom" / "common.h").is_file()
    assert "paramgeom_diff_stats_final" in kernel.read_text()


@pytest.mark.parametrize("kid,name", cupy_backend.main_kernels(), ids=lambda x: str(x))
def test_every_kernel_compiles_with_nvrtc(nvrtc, kid, name):
    code, _ = cupy_backend._source()
    options = (*cupy_backend.nvrtc_options(kid), "--gpu-architecture=compute_90")
    rc, log, ptx = _compile(nvrtc, code, options)
    assert rc == 0, f"NVRTC failed for {name}:\n{log}"
    for entry in (name, cupy_backend.FINAL, cupy_backend.FIXUP):
        assert f".entry {entry}(" in ptx, f"{entry} missing from the PTX"
    # One kernel per module: the macro keeps the others out (compile time at run time).
    others = [n for k, n in cupy_backend.main_kernels() if k != kid]
    assert not any(f".entry {n}(" in ptx for n in others)
    # --fmad=false: no fused multiply-add in the fp64 arithmetic, as in the nvcc build.
    assert "fma.rn.f64" not in ptx


def test_compiles_for_sm80(nvrtc):
    kid, name = cupy_backend.main_kernels()[4]  # bf16, the paper's dtype
    code, _ = cupy_backend._source()
    rc, log, ptx = _compile(
        nvrtc, code, (*cupy_backend.nvrtc_options(kid), "--gpu-architecture=compute_80")
    )
    assert rc == 0, log
    assert f".entry {name}(" in ptx
