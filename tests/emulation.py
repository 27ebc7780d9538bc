"""Test helpers shared by the CPU-side checks of GPU and optional backends."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

import paramgeom
from paramgeom import _contract

ROOT = Path(__file__).resolve().parents[1]
KERNEL_INCLUDE = ROOT / "csrc" / "include"
CUDA_DIR = ROOT / "csrc" / "cuda"


def kernel_include_dirs(tmp: Path) -> list[Path]:
    """Include dirs that compile the kernel sources outside CMake: csrc/include, csrc/cuda
    and ``tmp/include`` holding ``paramgeom/contract.h`` rendered from _contract.py (as the
    build renders it)."""
    header = tmp / "include" / _contract.HEADER_NAME
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(_contract.render_header())
    return [KERNEL_INCLUDE, tmp / "include", CUDA_DIR]


def build_emulator(tmp: Path, source: str, include_dirs: list[Path], extra_flags=()) -> ctypes.CDLL:
    """Compile ``source`` (CUDA kernels under a thread-per-CUDA-thread emulation) with the
    host C++ compiler into a shared library and load it; skip when there is no compiler."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    (tmp / "emulator.cpp").write_text(source)
    lib = tmp / "libemulator.so"
    cmd = [cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-ffp-contract=off"]
    cmd += [*extra_flags, *[f"-I{d}" for d in include_dirs]]
    cmd += [str(tmp / "emulator.cpp"), "-o", str(lib)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return ctypes.CDLL(str(lib))


def skip_unless_usable(backend: str) -> None:
    """Skip the calling test when ``backend`` cannot run here (with the reason)."""
    if backend == "triton":
        pytest.importorskip("triton")
    info = paramgeom.backends()[backend]
    if not info.available:
        pytest.skip(f"{backend}: {info.reason}")


def skip_unless_usable_on_cpu(backend: str, op: str) -> None:
    """:func:`skip_unless_usable`, and skip too when ``backend`` cannot take the CPU
    tensors the calling test builds: triton takes them only in its interpreter (on a GPU
    machine it runs compiled, on CUDA tensors). ``op``: the Triton kernel module."""
    skip_unless_usable(backend)
    if backend == "triton":
        import importlib

        kernels = importlib.import_module(f"paramgeom.triton_kernels.{op}")
        if not kernels.INTERPRETED:
            pytest.skip("triton takes CPU tensors only in its interpreter (TRITON_INTERPRET=1)")
