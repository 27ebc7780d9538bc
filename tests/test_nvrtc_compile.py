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
    texts, names = cupy_backend.nvrtc_headers()  # the generated paramgeom/contract.h
    headers = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
    include_names = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
    rc = lib.nvrtcCreateProgram(
        ctypes.byref(prog), code.encode(), b"kernels.cu", len(texts), headers, include_names
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
    assert paths is not None, "the CUDA kernel sources are not installed with the package"
    kernels, include = paths
    assert (include / "paramgeom" / "common.h").is_file()
    assert "paramgeom_diff_stats_final" in (kernels / "diff_stats_kernels.cuh").read_text()
    # contract.h is generated, never shipped: NVRTC gets it in memory from _contract.py.
    assert not (include / "paramgeom" / "contract.h").exists()


@pytest.mark.parametrize("kid,name", cupy_backend.main_kernels(), ids=lambda x: str(x))
def test_every_kernel_compiles_with_nvrtc(nvrtc, kid, name):
    code = cupy_backend.kernel_code("diff_stats")
    options = cupy_backend.full_nvrtc_options(cupy_backend.nvrtc_options("diff_stats", kid), "90")
    rc, log, ptx = _compile(nvrtc, code, options)
    assert rc == 0, f"NVRTC failed for {name}:\n{log}"
    for entry in (name, "paramgeom_diff_stats_final", "paramgeom_diff_stats_rows_fixup"):
        assert f".entry {entry}(" in ptx, f"{entry} missing from the PTX"
    # One kernel per module: the macro keeps the others out (compile time at run time).
    others = [n for k, n in cupy_backend.main_kernels() if k != kid]
    assert not any(f".entry {n}(" in ptx for n in others)
    # --fmad=false: no fused multiply-add in the fp64 arithmetic, as in the nvcc build.
    assert "fma.rn.f64" not in ptx
    # No flush to zero: subnormal fp16/fp8/bf16/fp32 inputs keep their values.
    assert ".ftz" not in ptx


def test_cupy_rawmodule_options_would_flush_subnormals(nvrtc):
    """Why the backend does not build through ``cupy.RawModule``: it appends ``-ftz=true``
    after the caller's options and NVRTC takes the last one, and the kernels' decoders
    then flush (``.ftz`` instructions) even with ``-ftz=false`` asked for first."""
    kid, _ = cupy_backend.main_kernels()[2]  # fp16: its subnormals decode through fp32
    code = cupy_backend.kernel_code("diff_stats")
    asked = cupy_backend.full_nvrtc_options(cupy_backend.nvrtc_options("diff_stats", kid), "90")
    rc, log, ptx = _compile(nvrtc, code, (*asked, "-ftz=true"))  # what RawModule hands on
    assert rc == 0, log
    assert ".ftz" in ptx


class _FakeNvrtc:
    """Records what the backend hands NVRTC; compiles nothing."""

    class NVRTCError(Exception):
        pass

    def __init__(self) -> None:
        self.options: list[tuple[str, ...]] = []
        self.headers: list[tuple[tuple, tuple]] = []

    def getVersion(self):  # noqa: N802 - cupy's spelling
        return (13, 0)

    def createProgram(self, code, name, headers, include_names):  # noqa: N802
        self.headers.append((tuple(headers), tuple(include_names)))
        return object()

    def compileProgram(self, prog, options):  # noqa: N802
        self.options.append(tuple(options))

    def getPTX(self, prog):  # noqa: N802
        return b"// ptx\0"

    def destroyProgram(self, prog):  # noqa: N802
        pass


def test_backend_hands_nvrtc_exactly_the_checked_options(monkeypatch, tmp_path):
    """The run-time build goes through :func:`full_nvrtc_options` and nothing else: the
    options the PTX check above compiles with are the ones NVRTC gets on a GPU."""
    import sys
    import types

    fake = _FakeNvrtc()
    loaded = []

    class Module:
        def load(self, data):
            loaded.append(data)

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.ModuleType("cupy.cuda")
    cupy.cuda.function = types.ModuleType("cupy.cuda.function")
    cupy.cuda.function.Module = Module
    cupy.cuda.Device = lambda: types.SimpleNamespace(compute_capability="90")
    for name, mod in (("cupy", cupy), ("cupy.cuda", cupy.cuda),
                      ("cupy.cuda.function", cupy.cuda.function)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(cupy_backend, "_nvrtc", lambda: fake)
    monkeypatch.setenv("PARAMGEOM_CACHE_DIR", str(tmp_path))
    kid, _ = cupy_backend.main_kernels()[0]
    base = cupy_backend.nvrtc_options("diff_stats", kid)
    code = cupy_backend.kernel_code("diff_stats")
    cupy_backend._compile_module(code, base, "t.cu")
    assert fake.options == [cupy_backend.full_nvrtc_options(base, "90")]
    assert fake.headers == [cupy_backend.nvrtc_headers()]
    assert "enum CountIndex" in fake.headers[0][0][0]
    assert "-ftz=false" in fake.options[0] and "-ftz=true" not in fake.options[0]
    assert loaded == [b"// ptx\0"]
    cupy_backend._compile_module(code, base, "t.cu")  # from the cache
    assert len(fake.options) == 1 and loaded[-1] == b"// ptx\0"


def test_compiles_for_sm80(nvrtc):
    kid, name = cupy_backend.main_kernels()[4]  # bf16, the paper's dtype
    code = cupy_backend.kernel_code("diff_stats")
    options = cupy_backend.nvrtc_options("diff_stats", kid)
    rc, log, ptx = _compile(nvrtc, code, cupy_backend.full_nvrtc_options(options, "80"))
    assert rc == 0, log
    assert f".entry {name}(" in ptx
