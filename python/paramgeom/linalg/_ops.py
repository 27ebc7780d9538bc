"""The only ways :mod:`paramgeom.linalg` touches weights: ``diff_matmul`` and ``gram_update``,
and two products outside the kernels' contract.

``diff_matmul`` and ``gram`` forward to the public kernels of DESIGN.md "Kernels (the
contract)" items 2 and 3 (:func:`paramgeom.api.diff_matmul.diff_matmul` and
:func:`paramgeom.api.gram_update.gram_update`). Results come back in float64 on the
weights' device, whatever the kernel's output dtype. The two others serve the exact path's
float32-then-Rayleigh-Ritz solve: ``gram32`` (a float32 Gram; on CPU BLAS's ``ssyrk``,
as the CPU kernel accumulates in float64 only) and ``exact_matmul`` (every product in
float64, which the kernels' fp32 products are not).

Which backend runs the kernels is :func:`kernel_backend`'s to say (a context, so that
``paramgeom diff --backend X`` reaches every product of every linear-algebra routine
without each routine growing a parameter); outside one, ``"auto"``.

Float64 weights are not a kernel storage dtype: for them (the tests use them as exact
oracles) an exact float64 torch path forms the difference one row block at a time. It is
exact but neither fused nor fast.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from paramgeom.api.diff_matmul import diff_matmul as _kernel_diff_matmul
from paramgeom.api.gram_update import gram_update as _kernel_gram_update
from paramgeom.linalg import _blas

__all__ = [
    "GramSum",
    "diff_matmul",
    "exact_matmul",
    "gram",
    "gram32",
    "kernel_backend",
    "matmul",
]

_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar(
    "paramgeom_linalg_backend", default="auto"
)


@contextlib.contextmanager
def kernel_backend(backend: str) -> Iterator[None]:
    """Within the block, every ``diff_matmul`` / ``gram_update`` call of
    :mod:`paramgeom.linalg` (randomized SVD, subspaces, sketches, spectra) runs on
    ``backend`` (``"auto"``, ``"cuda"``, ``"cupy"``, ``"triton"``, ``"cpu"``, ``"torch"``;
    an unusable one raises where the kernel is called, as ``backend=`` does)."""
    token = _BACKEND.set(backend)
    try:
        yield
    finally:
        _BACKEND.reset(token)


def current_backend() -> str:
    """The backend :func:`kernel_backend` set here, else ``"auto"``."""
    return _BACKEND.get()


_BLOCK_ROWS = 1024  # row block of the float64 path (bounds its temporaries)


def _use_float64_path(w: torch.Tensor) -> bool:
    return w.dtype == torch.float64


_BLOCK_ELEMS = 1 << 22  # elements per block of a blocked single-matrix product or Gram


def _block_rows(cols: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, cols))


def _float64_diff_matmul(w0, w1, x, transpose):
    x = x.to(device=w1.device, dtype=torch.float64)
    m = w1.shape[0]
    if transpose:
        # Accumulated as (x^T d)^T: MKL's one-thread dgemm takes 144 ms for x_b^T d_b
        # against 237 ms for d_b^T x_b (1536 x 4096 by 208 columns).
        out_t = torch.zeros(x.shape[1], w1.shape[1], dtype=torch.float64, device=w1.device)
    else:
        out = torch.empty(m, x.shape[1], dtype=torch.float64, device=w1.device)
    for r in range(0, m, _BLOCK_ROWS):
        d = w1[r : r + _BLOCK_ROWS].to(torch.float64)
        if w0 is not None:
            d = d - w0[r : r + _BLOCK_ROWS].to(torch.float64)
        if transpose:
            out_t.addmm_(x[r : r + _BLOCK_ROWS].T, d)
        else:
            out[r : r + _BLOCK_ROWS] = d @ x
    return out_t.T.contiguous() if transpose else out


def diff_matmul(
    w0: torch.Tensor | None, w1: torch.Tensor, x: torch.Tensor, transpose: bool = False
) -> torch.Tensor:
    """``(w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``) in float64, ``w0=None`` meaning zero.

    The kernel takes ``x`` in float32 and forms the difference in fp32 (DESIGN.md contract
    3), returning float32 within 1e-5 relative of the float64 product. A single matrix
    (``w0=None``) runs as ``diff_matmul(0, w_b, x_b)`` over row blocks ``w_b`` against one
    reused zero block of at most ``2^22`` elements, so no full-size zero matrix exists.
    """
    if _use_float64_path(w1):
        return _float64_diff_matmul(w0, w1, x, transpose)
    backend = current_backend()

    def dm(a, b, x, transpose=False):
        return _kernel_diff_matmul(a, b, x, transpose=transpose, backend=backend)

    xf = x.to(device=w1.device, dtype=torch.float32).contiguous()
    if w0 is not None:
        return dm(w0, w1, xf, transpose=transpose).to(torch.float64)
    m, n = w1.shape
    b = _block_rows(n)
    zero = torch.zeros(min(b, m), n, dtype=w1.dtype, device=w1.device)
    if transpose:
        out = torch.zeros(n, x.shape[1], dtype=torch.float64, device=w1.device)
    else:
        out = torch.empty(m, x.shape[1], dtype=torch.float64, device=w1.device)
    for r in range(0, m, b):
        wb = w1[r : r + b]
        zb = zero[: wb.shape[0]]
        if transpose:
            out += dm(zb, wb, xf[r : r + b], transpose=True)
        else:
            out[r : r + b] = dm(zb, wb, xf)
    return out


def matmul(w: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``w @ x`` (or ``w^T @ x``) of a single matrix, as ``diff_matmul(None, w, x)``."""
    return diff_matmul(None, w, x, transpose)


def exact_matmul(
    w0: torch.Tensor | None, w1: torch.Tensor, x: torch.Tensor, transpose: bool = False
) -> torch.Tensor:
    """``(w1 - w0) @ x`` (or its transpose's product) with every product and sum in float64,
    one row block of the difference at a time: what a float64 Rayleigh-Ritz step needs (the
    kernel's fp32 products would put 1e-7 relative errors into singular values). bf16, fp16
    and fp32 values are exact in float64; the cost is a float64 GEMM of ``m n x.shape[1]``."""
    return _float64_diff_matmul(w0, w1, x, transpose)


_GRAM32_COL_BLOCK = 256  # column block of gram32's upper block triangle (256 beat 512)


SYRK_FLOAT64_MIN = 1280
"""Smallest float64 Gram (its side) formed by ``syrk`` rather than the fused kernel, which
widens and subtracts in cache: one thread of the AVX-512 VM, update 2.7 times as long as
wide, ``syrk`` / kernel = 1.3 at 1024 (0.034 / 0.026 s), 1.0 at 1280, 0.58 at 1536, 0.86 at
1664 (0.75 for the wide shape), 0.89 at 2048 (0.67), 0.78 at 2560 (0.64)."""

_SYRK_BLOCK_ELEMS = 1 << 20
"""Elements of one block of ``d`` handed to ``syrk`` (8 MB in float64, with two converted
input blocks beside it): as fast as blocks four times larger (410 rows of a 2560-wide
update: 0.70 s against 0.72 s for 1024 rows) and 200 MB less peak memory per worker."""


def _syrk_gram(
    w0: torch.Tensor | None,
    w1: torch.Tensor,
    side: str,
    dtype: torch.dtype,
    deflate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gram matrix of ``d = w1 - w0`` (``w0=None``: zero) in ``dtype`` (float32 or float64)
    by BLAS's ``syrk`` (:mod:`paramgeom.linalg._blas`) on blocks of ``d`` formed in
    ``dtype``: row blocks for ``d^T d`` (``side="right"``), column blocks for ``d d^T``.
    One triangle is computed, then mirrored: exactly symmetric. The difference of bf16 or
    fp16 weights is exact in float32 and float64, so ``dtype`` decides only how the sums
    round (float64: as the float64 kernel's). ``deflate``: see :func:`gram32`."""
    size = w1.shape[1] if side == "right" else w1.shape[0]
    g = torch.zeros(size, size, dtype=dtype)
    _syrk_add_lower(g, w0, w1, side, deflate)
    return _blas.mirror_lower_(g)


def _syrk_add_lower(
    g: torch.Tensor,
    w0: torch.Tensor | None,
    w1: torch.Tensor,
    side: str,
    deflate: torch.Tensor | None = None,
):
    """``g``'s lower triangle ``+=`` that of ``d^T d`` (``side="right"``) or ``d d^T``, by
    ``syrk`` on blocks of ``d = w1 - w0`` formed in ``g``'s dtype (:func:`_syrk_gram`), each
    with ``deflate``'s span projected out first when it is given."""
    rows_are_samples = side == "right"
    dtype = g.dtype
    m, n = w1.shape
    size, length = (n, m) if rows_are_samples else (m, n)
    step = max(1, _SYRK_BLOCK_ELEMS // max(1, size))
    for r in range(0, length, step):
        cut = (slice(r, r + step),) if rows_are_samples else (slice(None), slice(r, r + step))
        d = w1[cut].to(dtype)  # w1 itself when already dtype: never changed in place
        if w0 is not None:
            d = d - w0[cut].to(dtype)
        if deflate is not None:
            d = _project_out(d, deflate, rows_are_samples)
        _blas.syrk_(g, d, rows_are_samples=rows_are_samples)


def _project_out(d: torch.Tensor, basis: torch.Tensor, rows_are_samples: bool) -> torch.Tensor:
    """``d`` with the span of the orthonormal float64 ``basis`` removed from its Gram's side:
    ``d (I - B B^T)`` when its rows are the samples (the Gram ``d^T d``), ``(I - B B^T) d``
    otherwise. In float64 (a float32 product would leave ``eps32 * ||d||`` of what it
    removes), returned in ``d``'s dtype."""
    x = d.to(torch.float64)
    x = x - ((x @ basis) @ basis.T if rows_are_samples else basis @ (basis.T @ x))
    return x.to(d.dtype)


def _deflated_gram64(
    w0: torch.Tensor | None, w1: torch.Tensor, side: str, deflate: torch.Tensor
) -> torch.Tensor:
    """The float64 Gram of ``d = w1 - w0`` with ``deflate``'s span projected out of ``d``,
    formed whole (float64 weights, CUDA: the paths :func:`gram32` does not block)."""
    d = w1.to(torch.float64)
    if w0 is not None:
        d = d - w0.to(torch.float64)
    d = _project_out(d, deflate.to(d.device), side == "right")
    g = d.T @ d if side == "right" else d @ d.T
    return 0.5 * (g + g.T)


def _syrk_wanted(device: torch.device, dtype: torch.dtype, size: int | None = None) -> bool:
    """Whether a CPU Gram of ``size`` columns (``None``: any) goes through BLAS's ``syrk``:
    under the ``"auto"`` backend (a named backend runs its own kernel), when SciPy's BLAS is
    there, and for a float64 Gram from ``SYRK_FLOAT64_MIN`` columns."""
    if dtype == torch.float64 and size is not None and size < SYRK_FLOAT64_MIN:
        return False
    return device.type == "cpu" and current_backend() == "auto" and _blas.available(dtype)


def gram32(
    w0: torch.Tensor | None,
    w1: torch.Tensor,
    side: str,
    deflate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gram matrix of ``d = w1 - w0`` (``w0=None``: zero) accumulated in float32, for a
    float32 reduction that a float64 Rayleigh-Ritz step finishes (``randomized_svd``'s exact
    path). On CUDA it is :func:`gram` (whose kernel accumulates in float32 there); on CPU,
    where the kernel accumulates in float64 only, BLAS's ``ssyrk`` on float32 blocks of
    ``d`` (:func:`_syrk_gram`; 6880 x 2560 on one thread of the AVX-512 VM: 0.43-0.47 s
    against 0.44-0.50 s for float32 GEMMs over the upper block triangle, the same at 1024
    columns), or those GEMMs where SciPy's BLAS cannot be reached or another backend is
    named. Exactly symmetric. Float64 weights (the tests' oracles) keep :func:`gram`.

    ``deflate`` (orthonormal float64 columns on the Gram's side, ``(size, s)``): the Gram of
    ``d`` with their span projected out of it (``d (I - B B^T)``, or ``(I - B B^T) d`` for
    ``side="left"``), each block projected in float64 before it is summed in float32. A few
    large singular values (spikes) set a float32 Gram's rounding, ``eps32 * s_1^2``; with
    their vectors projected out it is ``eps32 * s_{s+1}^2`` (``eigen.passing_window``)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if deflate is not None:
        size = w1.shape[1] if side == "right" else w1.shape[0]
        if deflate.dim() != 2 or deflate.shape[0] != size or deflate.dtype != torch.float64:
            raise ValueError(
                f"deflate must be float64 of shape ({size}, s), got {deflate.dtype} "
                f"{tuple(deflate.shape)}"
            )
    if _use_float64_path(w1) or w1.device.type != "cpu":
        if deflate is not None:
            return _deflated_gram64(w0, w1, side, deflate).to(torch.float32)
        return gram(w0, w1, side).to(torch.float32)
    if _syrk_wanted(w1.device, torch.float32):
        return _syrk_gram(w0, w1, side, torch.float32, deflate)
    if side == "left":
        w1 = w1.T
        w0 = None if w0 is None else w0.T
    rows, n = w1.shape
    g = torch.zeros(n, n, dtype=torch.float32)
    step = _block_rows(n)
    for r in range(0, rows, step):
        d = w1[r : r + step].to(torch.float32)
        if w0 is not None:
            d = d - w0[r : r + step].to(torch.float32)
        if deflate is not None:
            d = _project_out(d, deflate, rows_are_samples=True)
        # The upper block triangle only, mirrored below: 24-32% less time than the full
        # GEMM (2752 x 1024: 66 vs 88 ms; 5504 x 2048: 467 vs 691 ms), and exactly symmetric.
        # (Writing the lower one instead took 15% longer: 0.25 vs 0.21 s at 5504 x 2048.)
        for c in range(0, n, _GRAM32_COL_BLOCK):
            g[c : c + _GRAM32_COL_BLOCK, c:].addmm_(d[:, c : c + _GRAM32_COL_BLOCK].T, d[:, c:])
    return _blas.mirror_lower_(g.T).T  # g's upper triangle is the lower one of g.T


def gram(w0: torch.Tensor | None, w1: torch.Tensor, side: str) -> torch.Tensor:
    """Gram matrix of ``d = w1 - w0`` (``w0=None``: zero) in float64.

    ``side="right"`` gives ``d^T d`` (n x n) in one ``gram_update`` call. ``side="left"``
    gives ``d d^T`` (m x m) as the sum over column blocks ``d_j`` of ``d_j d_j^T``: each block
    is handed to ``gram_update`` as a contiguous copy of ``w[:, j]^T`` (at most ``2^22``
    elements of the weight dtype), since the kernel reads rows. The accumulator is float64 on
    CPU and float32 on CUDA (DESIGN.md contract 2); the result is returned in float64.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if _use_float64_path(w1):
        if side == "left":
            w1 = w1.T
            w0 = None if w0 is None else w0.T
        n = w1.shape[1]
        g = torch.zeros(n, n, dtype=torch.float64, device=w1.device)
        for r in range(0, w1.shape[0], _BLOCK_ROWS):
            d = w1[r : r + _BLOCK_ROWS].to(torch.float64)
            if w0 is not None:
                d = d - w0[r : r + _BLOCK_ROWS].to(torch.float64)
            g += d.T @ d
        return g
    size = w1.shape[1] if side == "right" else w1.shape[0]
    if _syrk_wanted(w1.device, torch.float64, size):
        return _syrk_gram(w0, w1, side, torch.float64)
    backend = current_backend()

    def gu(g, x, x0=None):
        return _kernel_gram_update(g, x, x0, backend=backend)

    acc = torch.float64 if w1.device.type == "cpu" else torch.float32
    m, n = w1.shape
    if side == "right":
        g = torch.zeros(n, n, dtype=acc, device=w1.device)
        gu(g, w1, w0)
        return g.to(torch.float64)
    g = torch.zeros(m, m, dtype=acc, device=w1.device)
    b = _block_rows(m)
    for c in range(0, n, b):
        x = w1[:, c : c + b].T.contiguous()
        x0 = None if w0 is None else w0[:, c : c + b].T.contiguous()
        gu(g, x, x0)
    return g.to(torch.float64)


class GramSum:
    """``sum_b d_b^T d_b`` over row blocks ``d_b = w1_b - w0_b`` handed in one at a time (a
    matrix streamed in row blocks): its ``n x n`` right Gram, returned in float64.

    Each block goes where :func:`gram` would send the whole matrix: on CPU under the
    ``"auto"`` backend and from ``SYRK_FLOAT64_MIN`` columns, BLAS's ``dsyrk`` into the
    lower triangle (mirrored once, in :meth:`result`); otherwise the ``gram_update`` kernel
    on the backend of :func:`kernel_backend`, accumulating in float64 on CPU and float32 on
    CUDA (DESIGN.md contract 2). Float64 weights (the tests' oracles) take :func:`gram`'s
    exact float64 path block by block. The sum is the same whatever the row blocks are, up
    to the rounding of the order of the additions.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.n = int(n)
        self.device = torch.device(device)
        self._syrk = _syrk_wanted(self.device, torch.float64, self.n)
        acc = torch.float64 if self.device.type == "cpu" else torch.float32
        self._g = torch.zeros(self.n, self.n, dtype=acc, device=self.device)
        self._done = False

    def add(self, w1: torch.Tensor, w0: torch.Tensor | None = None) -> None:
        """Add the Gram of the row block ``w1 - w0`` (``w0=None``: zero), ``(rows, n)``."""
        if self._done:
            raise RuntimeError("GramSum.add after result(): the sum is closed")
        if w1.dim() != 2 or w1.shape[1] != self.n:
            raise ValueError(f"a row block of {self.n} columns is needed, got {tuple(w1.shape)}")
        if w0 is not None and w0.shape != w1.shape:
            raise ValueError(f"w0 {tuple(w0.shape)} and w1 {tuple(w1.shape)} differ in shape")
        if w1.shape[0] == 0:
            return
        if _use_float64_path(w1):
            self._g += gram(w0, w1, "right").to(self._g.dtype)
        elif self._syrk:
            _syrk_add_lower(self._g, w0, w1, "right")
        else:
            _kernel_gram_update(self._g, w1, w0, backend=current_backend())

    def result(self) -> torch.Tensor:
        """The sum, float64 and exactly symmetric (the ``syrk`` path's lower triangle
        mirrored, the kernel's sum averaged with its transpose); closes the sum."""
        if not self._done:
            if self._syrk:
                self._g = _blas.mirror_lower_(self._g)
            else:
                g = self._g.to(torch.float64)
                self._g = 0.5 * (g + g.T)
            self._done = True
        return self._g.to(torch.float64)
