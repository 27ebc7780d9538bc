"""LAPACK's symmetric subset eigensolver (``ssyevr`` / ``dsyevr``) called without the GIL.

SciPy's ``eigh`` holds the interpreter lock for the whole solve, so two threads solving two
matrices take as long as one thread solving both (measured: 0.48 vs 0.49 s for four
1024 x 1024 float32 windows on the 2-core VM). SciPy also exports every LAPACK routine it
links as a C function pointer (``scipy.linalg.cython_lapack``, the interface meant for
compiled callers); calling that pointer through :mod:`ctypes` releases the lock for the
call, and the same solves on two threads take 0.25 s. Same library, same routine, same
arguments as ``scipy.linalg.eigh(driver="evr")``: the eigenvalues are bit-identical.

The solve runs on one OpenBLAS thread
(:func:`~paramgeom.linalg._scipy_capi.one_blas_thread`): its bits do not depend on
``OPENBLAS_NUM_THREADS``, and OpenBLAS's spinning threads do not slow torch's.

Where the pointer cannot be had (another SciPy layout, no SciPy), :func:`syevr` returns
None and the callers use ``scipy.linalg.eigh`` (or torch) as before.
"""

from __future__ import annotations

import ctypes

import numpy as np

from paramgeom.linalg._scipy_capi import one_blas_thread, routine

__all__ = ["syevr"]

_P = ctypes.c_void_p
_SYEVR_ARGS = 21  # every argument of ?syevr is a pointer (Fortran calling convention)


def _routine(name: str):
    """SciPy's ``cython_lapack`` routine ``name`` as a ctypes function, or None."""
    return routine("cython_lapack", name, _SYEVR_ARGS)


_NAMES = {np.dtype(np.float32): "ssyevr", np.dtype(np.float64): "dsyevr"}


def available(dtype: np.dtype) -> bool:
    """Whether :func:`syevr` can solve matrices of ``dtype`` without the GIL."""
    name = _NAMES.get(np.dtype(dtype))
    return name is not None and _routine(name) is not None


def syevr(
    a: np.ndarray, first: int, last: int, *, vectors: bool = True
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Eigenvalues ``first..last`` (0-based, inclusive, ascending order as LAPACK counts
    them) of the exactly symmetric ``a`` (``n x n``, float32 or float64, C- or
    Fortran-contiguous: a symmetric matrix is its own transpose), and with ``vectors`` their
    eigenvectors as the columns of an ``(n, last - first + 1)`` array. ``a`` is overwritten.

    None when the routine cannot be called this way (then the caller solves with SciPy).
    Raises ``ValueError`` for NaN/Inf in ``a`` and ``numpy.linalg.LinAlgError`` when LAPACK
    reports a failure.
    """
    dtype = a.dtype
    fn = _routine(_NAMES[dtype]) if dtype in _NAMES else None
    n = int(a.shape[0]) if a.ndim == 2 else -1
    if fn is None or a.shape != (n, n) or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return None
    if not 0 <= first <= last < n:
        raise ValueError(f"need 0 <= first <= last < {n}, got {first}, {last}")
    if not a.flags.writeable:
        raise ValueError("syevr overwrites its input: a writeable array is needed")
    # LAPACK answers finite-looking numbers for a matrix holding NaN (measured): refuse it.
    # One sum first (a millisecond against the solve's 100 at n = 1024).
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(a.sum()) or np.isfinite(a).all()
    if not finite:
        raise ValueError("non-finite values (NaN/Inf) in the matrix; eigenvalues are undefined")
    count = last - first + 1

    def ints(*v: int) -> list[np.ndarray]:
        return [np.array([x], dtype=np.int32) for x in v]

    n_, lda, il, iu, found, info = ints(n, max(1, n), first + 1, last + 1, 0, 0)
    vl, vu, abstol = (np.zeros(1, dtype) for _ in range(3))  # abstol 0: LAPACK's default
    w = np.empty(max(1, n), dtype)
    z = np.empty((count, n) if vectors else (1, 1), dtype)  # Fortran (n, count), C (count, n)
    ldz = ints(n if vectors else 1)[0]
    isuppz = np.empty(2 * max(1, count), np.int32)
    work, iwork = np.empty(1, dtype), np.empty(1, np.int32)
    lwork, liwork = ints(-1, -1)

    def call() -> None:
        args = (n_, a, lda, vl, vu, il, iu, abstol, found, w, z, ldz, isuppz, work, lwork,
                iwork, liwork, info)  # fmt: skip
        ptrs = [x.ctypes.data_as(_P) for x in args]
        fn(
            ctypes.c_char_p(b"V" if vectors else b"N"), ctypes.c_char_p(b"I"),
            ctypes.c_char_p(b"L"), *ptrs,
        )  # fmt: skip

    call()  # workspace query
    lwork[0], liwork[0] = int(work[0]), int(iwork[0])
    work, iwork = np.empty(max(1, lwork[0]), dtype), np.empty(max(1, liwork[0]), np.int32)
    with one_blas_thread():  # bits independent of OPENBLAS_NUM_THREADS
        call()
    if info[0] != 0:
        raise np.linalg.LinAlgError(f"LAPACK {_NAMES[dtype]} failed (info = {int(info[0])})")
    m = int(found[0])
    return w[:m].copy(), (z[:m].T if vectors else None)
