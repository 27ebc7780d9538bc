"""BLAS and LAPACK routines through the C function pointers SciPy exports.

``scipy.linalg.cython_blas`` and ``cython_lapack`` export every routine SciPy links as a
capsule holding its C function pointer (the interface meant for compiled callers). Called
through :mod:`ctypes`, the interpreter lock is released for the call, which SciPy's own
Python wrappers hold: :mod:`paramgeom.linalg._lapack` (``syevr``) and
:mod:`paramgeom.linalg._blas` (``syrk``) reach their routines here.
"""

from __future__ import annotations

import ctypes
import functools
import importlib

__all__ = ["routine"]

_P = ctypes.c_void_p


@functools.cache
def routine(module: str, name: str, n_args: int):
    """``name`` from ``scipy.linalg.<module>`` (``"cython_blas"`` or ``"cython_lapack"``) as
    a ctypes function of ``n_args`` pointer arguments (Fortran's calling convention passes
    every argument by reference), or None where SciPy or the routine is not there."""
    try:
        capi = importlib.import_module(f"scipy.linalg.{module}")
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    capsule = getattr(capi, "__pyx_capi__", {}).get(name)
    if capsule is None:  # pragma: no cover - depends on the SciPy build
        return None
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = _P, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    if not address:  # pragma: no cover
        return None
    return ctypes.CFUNCTYPE(None, *([_P] * n_args))(address)
