"""BLAS's symmetric rank-k update (``ssyrk`` / ``dsyrk``) called without the GIL.

A Gram matrix ``d^T d`` is symmetric: ``syrk`` computes one triangle, half the multiply-adds
of a GEMM, with the packing and register blocking of a tuned BLAS. On the 2-core AVX-512 VM
(one thread, a 6880 x 2560 float64 update already formed) ``dsyrk`` takes 0.59-0.70 s, MKL's
full ``dgemm`` 1.03 s; the fused float64 ``gram_update`` kernel, which also widens and
subtracts the bf16 weights, 1.05-1.17 s against ``syrk``'s 0.85-0.92 s with that done by
torch (the callers' rules in :mod:`paramgeom.linalg._ops`).

The routine is the one SciPy links, reached through the C function pointer that
``scipy.linalg.cython_blas`` exports (as :mod:`paramgeom.linalg._lapack` does for
``syevr``): :mod:`ctypes` releases the interpreter lock for the call, so the workers of
``paramgeom diff`` run their Grams side by side. Where the pointer cannot be had,
:func:`available` is False and the callers keep their GEMM paths.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from paramgeom.linalg._scipy_capi import routine

__all__ = ["available", "syrk_"]

_P = ctypes.c_void_p
_SYRK_ARGS = 10  # every argument of ?syrk is a pointer (Fortran calling convention)
_NAMES = {torch.float32: ("ssyrk", np.float32), torch.float64: ("dsyrk", np.float64)}
_INT_MAX = 2**31 - 1  # SciPy's BLAS takes 32-bit integers


def _routine(name: str):
    """SciPy's ``cython_blas`` routine ``name`` as a ctypes function, or None."""
    return routine("cython_blas", name, _SYRK_ARGS)


def available(dtype: torch.dtype) -> bool:
    """Whether :func:`syrk_` can update Grams of ``dtype`` (float32 or float64)."""
    name = _NAMES.get(dtype)
    return name is not None and _routine(name[0]) is not None


def syrk_(g: torch.Tensor, a: torch.Tensor, *, rows_are_samples: bool = True) -> torch.Tensor:
    """``g += a^T a`` (``rows_are_samples``; ``a`` is ``k x n``) or ``g += a a^T`` (``a`` is
    ``n x k``), in ``g``'s lower triangle (row-major view) only: the strict upper triangle is
    left as it was, and the caller mirrors the result once at the end (:func:`mirror_lower_`).

    ``g``: a C-contiguous ``n x n`` CPU tensor of float32 or float64; ``a``: the same dtype,
    on the CPU, with unit stride along its last dimension (rows may be strided, as a column
    block of a larger row-major matrix is). Raises ``ValueError`` otherwise, and
    ``RuntimeError`` when :func:`available` is False.
    """
    if g.dtype not in _NAMES or a.dtype != g.dtype:
        raise ValueError(f"syrk_ needs float32 or float64 of one dtype, got {g.dtype}, {a.dtype}")
    if g.device.type != "cpu" or a.device.type != "cpu":
        raise ValueError("syrk_ runs on CPU tensors")
    n = g.shape[0] if g.dim() == 2 else -1
    if g.shape != (n, n) or not g.is_contiguous():
        raise ValueError(f"syrk_ needs a C-contiguous square Gram, got shape {tuple(g.shape)}")
    if a.dim() != 2:
        raise ValueError(f"syrk_ needs a 2-D update, got shape {tuple(a.shape)}")
    k, size = (a.shape[0], a.shape[1]) if rows_are_samples else (a.shape[1], a.shape[0])
    if size != n:
        raise ValueError(f"update of shape {tuple(a.shape)} does not fit a {n} x {n} Gram")
    if n == 0 or k == 0:
        return g
    if a.stride(1) != 1 and a.shape[1] > 1:
        a = a.contiguous()
    ld = max(1, a.stride(0) if a.shape[0] > 1 else a.shape[1])
    if max(n, k, ld) > _INT_MAX:
        raise ValueError(f"syrk_ takes dimensions below 2^31, got {n} x {k} (stride {ld})")
    name, np_dtype = _NAMES[g.dtype]
    fn = _routine(name)
    if fn is None:
        raise RuntimeError(f"BLAS {name} is not available through SciPy")
    # Row-major a (k x n, leading dimension ld) is, to Fortran, the n x k matrix a^T: a^T a
    # is then "N" (A A^T of Fortran's A), a a^T is "T". Fortran's upper triangle of g is
    # the row-major lower one.
    trans = b"N" if rows_are_samples else b"T"
    ints = [np.array([x], dtype=np.int32) for x in (n, k, ld, n)]
    one = np.ones(1, dtype=np_dtype)
    fn(
        ctypes.c_char_p(b"U"), ctypes.c_char_p(trans),
        ints[0].ctypes.data_as(_P), ints[1].ctypes.data_as(_P), one.ctypes.data_as(_P),
        _P(a.data_ptr()), ints[2].ctypes.data_as(_P), one.ctypes.data_as(_P),
        _P(g.data_ptr()), ints[3].ctypes.data_as(_P),
    )  # fmt: skip
    return g


def mirror_lower_(g: torch.Tensor) -> torch.Tensor:
    """Copy ``g``'s strict lower triangle onto its upper one: exactly symmetric."""
    g.tril_()
    return g.add_(g.tril(-1).T)
