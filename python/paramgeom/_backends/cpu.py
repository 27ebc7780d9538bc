"""The ``cpu`` backend: the C++/OpenMP kernels of ``paramgeom._C`` on CPU tensors."""

from __future__ import annotations

import functools

import numpy as np
import torch

from paramgeom import _contract, _dtypes, _native
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw


@functools.cache
def status() -> tuple[bool, str]:
    module, why = _native.load("_C")
    if module is None:
        return False, f"paramgeom._C {why}"
    products = (
        "AVX-512 product kernels"
        if module.diff_matmul_supported()
        else "products via torch's GEMM on fp32 tiles"
    )
    return True, f"C++/OpenMP, {module.best_isa()}, {module.max_threads()} threads, {products}"


def _kernels():
    """The compiled ``paramgeom._C`` module, or a RuntimeError saying why it is missing."""
    module, why = _native.load("_C")
    if module is None:
        raise RuntimeError(f"cpu backend unavailable: paramgeom._C {why}")
    return module


def _host(t: torch.Tensor | None) -> np.ndarray | torch.Tensor | None:
    """A CPU tensor as a NumPy array on the same memory (no copy, strides kept).

    The binding reads NumPy arrays through the buffer protocol in about 2 us; a torch tensor
    goes through ``Tensor.__dlpack__`` (about 12 us), which for a small tensor costs more
    than the kernel: 50,000 small tensors spent 2.5 s there.
    """
    if t is None or t.numel() == 0:  # NumPy gives an empty array no strides: DLPack's has them
        return t
    return t.detach().numpy() if t.requires_grad else t.numpy()


def diff_stats(job: DiffStatsJob, *, num_threads: int | None = None, isa: str = "") -> DiffStatsRaw:
    """Run the OpenMP kernel; ``num_threads`` defaults to ``torch.get_num_threads()``."""
    module = _kernels()
    counts = np.zeros(_contract.NUM_COUNTS, dtype=np.int64)
    sums = np.zeros(_contract.NUM_SUMS, dtype=np.float64)
    row_changed = row_sq = None
    if job.per_row:
        row_changed = torch.empty(job.rows, dtype=torch.int64)
        row_sq = torch.empty(job.rows, dtype=torch.float64)
    module.diff_stats(
        _host(job.w0),
        _host(job.w1),
        dtype=job.dtype_code,
        rel_tols=list(job.rel_tols),
        abs_tols=list(job.abs_tols),
        cast_bf16=job.cast_bf16,
        changed_index=job.changed_index,
        counts=counts,
        sums=sums,
        row_changed=_host(row_changed),
        row_sq_delta=_host(row_sq),
        num_threads=torch.get_num_threads() if num_threads is None else num_threads,
        isa=isa,
        scale0=_host(job.scale0),
        scale1=_host(job.scale1),
        scale_row0=job.scale_row0,
    )
    return DiffStatsRaw(torch.from_numpy(counts), torch.from_numpy(sums), row_changed, row_sq)


# ---------------------------------------------------------------------------------------
# Linear algebra (DESIGN.md kernels 2 and 3; contracts in job.py). Pure torch on top of
# its BLAS: the difference is formed one cache-sized fp32 (diff_matmul) or fp64
# (gram_update) tile at a time and handed straight to the GEMM, so the full difference is
# never stored. Tile sizes are chosen by measurement (benchmarks/bench_diff_matmul.py).

# diff_matmul tiles: DM_BLOCK_C columns by DM_TILE_ELEMS // DM_BLOCK_C rows of fp32
# (2 MiB). On a 2-core AVX-512 EPYC (4096 x 14336 bf16, k = 64) this measured 68 ms
# against 80 ms for full-width row blocks of 32 rows and 112 ms for one whole GEMM.
DM_TILE_ELEMS = 1 << 19
DM_BLOCK_C = 2048
# gram_update row blocks: float64 difference blocks of about GRAM_TILE_ELEMS elements,
# and never fewer than GRAM_MIN_ROWS rows (each block reads and writes all of G).
GRAM_TILE_ELEMS = 1 << 21
GRAM_MIN_ROWS = 256


def _diff_tile(w0: torch.Tensor, w1: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """``buf[:rows, :cols] = w1 - w0`` in fp32: exact widening, then one subtraction, in one
    pass of the C++ kernel (``torch`` needs two: ``copy_`` then ``sub_``)."""
    tile = buf[: w0.shape[0], : w0.shape[1]]
    module = _kernels()
    module.diff_tile(
        _dtypes.bits_view(w0),
        _dtypes.bits_view(w1),
        dtype=_dtypes.dtype_code(w0.dtype),
        out=tile,
        num_threads=torch.get_num_threads(),
    )
    return tile


def diff_matmul(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``), the difference never materialised.

    On an AVX-512 CPU one call of the fused C++ kernel (``csrc/cpu/diff_matmul_cpu.h``:
    fp32 difference tiles consumed in cache by a register-blocked micro-kernel); elsewhere
    fp32 difference tiles handed to torch's GEMM (:func:`diff_matmul_tiles`).
    """
    module = _kernels()
    if module.diff_matmul_supported():
        module.diff_matmul(
            _dtypes.bits_view(w0),
            _dtypes.bits_view(w1),
            dtype=_dtypes.dtype_code(w0.dtype),
            x=x,
            out=out,
            transpose=transpose,
            num_threads=torch.get_num_threads(),
        )
        return
    diff_matmul_tiles(w0, w1, x, transpose, out)


def diff_matmul_tiles(
    w0: torch.Tensor, w1: torch.Tensor, x: torch.Tensor, transpose: bool, out: torch.Tensor
) -> None:
    """``out = (w1 - w0) @ x`` (or ``(w1 - w0)^T @ x``) through fp32 difference tiles
    handed to torch's GEMM (the path for CPUs without AVX-512)."""
    m, n = w0.shape
    block_c = min(n, DM_BLOCK_C)
    block_r = min(m, max(1, DM_TILE_ELEMS // block_c))
    buf = torch.empty(block_r, block_c, dtype=torch.float32)
    if not transpose:
        # out[rows] = sum over column blocks of D[rows, cols] @ x[cols]
        for r0 in range(0, m, block_r):
            r1 = min(m, r0 + block_r)
            o = out[r0:r1]
            for c0 in range(0, n, block_c):
                c1 = min(n, c0 + block_c)
                tile = _diff_tile(w0[r0:r1, c0:c1], w1[r0:r1, c0:c1], buf)
                if c0 == 0:
                    torch.mm(tile, x[c0:c1], out=o)
                else:
                    o.addmm_(tile, x[c0:c1])
    else:
        # out[cols] = sum over row blocks of D[rows, cols]^T @ x[rows]
        for c0 in range(0, n, block_c):
            c1 = min(n, c0 + block_c)
            o = out[c0:c1]
            for r0 in range(0, m, block_r):
                r1 = min(m, r0 + block_r)
                tile = _diff_tile(w0[r0:r1, c0:c1], w1[r0:r1, c0:c1], buf)
                if r0 == 0:
                    torch.mm(tile.T, x[r0:r1], out=o)
                else:
                    o.addmm_(tile.T, x[r0:r1])


def gram_update(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> None:
    """``G += alpha * (x - x0)^T (x - x0)`` in float64.

    On an AVX-512 CPU one call of the C++ kernel (``csrc/cpu/gram_update_cpu.h``: float64
    difference row blocks, upper-triangle blocks by the register-blocked micro-kernel,
    each added to both halves of G); elsewhere float64 row blocks and torch's ``addmm_``
    (:func:`gram_update_blocks`).
    """
    module = _kernels()
    if module.gram_update_supported() and G.dtype == torch.float64:
        module.gram_update(
            G,
            _dtypes.bits_view(x),
            None if x0 is None else _dtypes.bits_view(x0),
            dtype=_dtypes.dtype_code(x.dtype),
            alpha=alpha,
            num_threads=torch.get_num_threads(),
        )
        return
    gram_update_blocks(G, x, x0, alpha)


# gram_update_blocks computes the upper block triangle only (the product is symmetric): column
# blocks of GRAM_COL_BLOCK; a Gram of n columns then costs (1/2 + GRAM_COL_BLOCK / 2n) of the
# full product's flops (62% at n = 1024).
GRAM_COL_BLOCK = 256


def gram_update_blocks(
    G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float
) -> None:
    """``G += alpha * (x - x0)^T (x - x0)`` through float64 row blocks and torch's
    ``addmm_`` (the path for CPUs without AVX-512): the upper block triangle of the product
    is accumulated (one GEMM per column block and row block), and its upper triangle,
    mirrored, is added to ``G``: the update is exactly symmetric (a GEMM's two halves of
    ``d^T d`` may differ in the last bit, e.g. with subnormal products)."""
    r, n = x.shape
    block_r = min(r, max(GRAM_MIN_ROWS, GRAM_TILE_ELEMS // n))
    buf = torch.empty(block_r, n, dtype=torch.float64)
    nb = GRAM_COL_BLOCK
    upper = torch.zeros(n, n, dtype=torch.float64)
    for r0 in range(0, r, block_r):
        d = _gram_rows(buf, x, x0, r0, min(r, r0 + block_r))
        for c0 in range(0, n, nb):
            upper[c0 : c0 + nb, c0:].addmm_(d[:, c0 : c0 + nb].T, d[:, c0:])
    upper.triu_()
    upper += upper.triu(1).T
    G.add_(upper, alpha=alpha)


def _gram_rows(buf: torch.Tensor, x, x0, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``x - x0`` in float64, in ``buf``."""
    d = buf[: r1 - r0]
    d.copy_(x[r0:r1])
    if x0 is not None:
        d.sub_(x0[r0:r1])
    return d
