"""BLAS and LAPACK routines through the C function pointers SciPy exports.

``scipy.linalg.cython_blas`` and ``cython_lapack`` export every routine SciPy links as a
capsule holding its C function pointer (the interface meant for compiled callers). Called
through :mod:`ctypes`, the interpreter lock is released for the call, which SciPy's own
Python wrappers hold: :mod:`paramgeom.linalg._lapack` (``syevr``) and
:mod:`paramgeom.linalg._blas` (``syrk``) reach their routines here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import threading
from collections.abc import Iterator

__all__ = ["one_blas_thread", "routine"]

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


@functools.cache
def _set_threads():
    """OpenBLAS's ``openblas_set_num_threads_local`` (0.3.27 and later: sets the thread count
    and returns the one it replaces; in SciPy's build the count is the process's, measured:
    another thread sees it) in the library SciPy's routines come from, or None (another
    BLAS, an older OpenBLAS, another layout). Looked up from SciPy's ``cython_lapack``
    module: a symbol search from a library covers its dependencies."""
    try:
        lib = ctypes.CDLL(importlib.import_module("scipy.linalg.cython_lapack").__file__)
    except (ImportError, OSError, TypeError):  # pragma: no cover - depends on the install
        return None
    for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
            return fn
    return None  # pragma: no cover


_pin_lock = threading.Lock()
_pinned = 0  # calls inside one_blas_thread, in every thread
_count_before = 1


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """SciPy's OpenBLAS runs on one thread while any call of ours is inside the block (in any
    thread), and goes back to its count when the last one leaves.

    Why: OpenBLAS's threaded symmetric products sum in another order with another thread
    count, so an eigensolve's last bits followed ``OPENBLAS_NUM_THREADS`` (the command line
    sets 1; a monitor in a training script ran with the cores), and its threads, once woken,
    spin for a while, taking the cores from torch's own threads: a monitor record (hundreds
    of small eigenproblems between torch products, 2 torch threads) took 2.4 s with them
    woken and 0.35 s with them asleep. What it costs: a large solve loses OpenBLAS's threads
    (``dsyevr`` of 2048 columns for the top eighth, 2-core VM: 0.86 s against 0.56 s with
    two); the engine runs matrices side by side instead. Other code's OpenBLAS calls made
    while one of ours is inside run on one thread too."""
    global _pinned, _count_before
    fn = _set_threads()
    if fn is None:  # pragma: no cover - depends on the install
        yield
        return
    with _pin_lock:
        if _pinned == 0:
            _count_before = fn(1)
        _pinned += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pinned -= 1
            if _pinned == 0:
                fn(_count_before)
