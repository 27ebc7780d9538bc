"""Streaming Gram update (DESIGN.md, kernel 2): ``G += alpha * (x - x0)^T (x - x0)``.

With ``D = x - x0`` of shape ``(r, n)`` (``x0`` absent means zero), each program owns one
``BLOCK_N x BLOCK_N`` tile ``(I, J)`` of ``G`` with ``J >= I`` (the Gram is symmetric, so
the lower tiles are the upper ones transposed) and walks the rows ``BLOCK_R`` at a time:

    d_I  = float32(x[rows, I]) - float32(x0[rows, I])    exact widening, one fp32 subtraction
    d_J  = the same for the columns J
    acc += dot(d_I^T, d_J)                               fp32 products and sums, IEEE

then adds ``alpha * acc`` to ``G[I, J]`` and, off the diagonal, its transpose to
``G[J, I]``, in ``G``'s dtype (float32 or float64). When the tiles are too few to fill
the GPU (a narrow ``n``), the rows are split across ``SPLIT`` programs per tile: each
stores its fp32 partial tile and the partials are summed in float64 in split order before
``alpha`` times the sum is added to ``G``. Each ``G`` element is written by one program
(no atomics): the bits depend on the shape alone. Row blocks of one matrix may arrive one
call at a time; the calls' sum is the Gram of the whole.
``paramgeom.reference.gram_update_ref`` (float64 torch) defines the result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import cdiv, gemm_plan

INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _load_diff(x_ptr, x0_ptr, r, c, sx, sx0, mask, HAS_X0: tl.constexpr):
    """fp32 ``x[r, c] - x0[r, c]`` (masked entries 0); ``r``, ``c`` int64 index tiles."""
    d = tl.load(x_ptr + r * sx + c, mask=mask, other=0.0).to(tl.float32)
    if HAS_X0:
        d = d - tl.load(x0_ptr + r * sx0 + c, mask=mask, other=0.0).to(tl.float32)
    return d


@triton.jit
def _gram_update_kernel(
    x_ptr,
    x0_ptr,  # == x_ptr when HAS_X0 is off (never read)
    dst_ptr,  # G [n, n] (ACCUMULATE) or fp32 partials [SPLIT, n, n] (else); contiguous
    alpha_ptr,  # [1], G's dtype
    R,
    N,
    sx,
    sx0,
    steps_per_split,
    HAS_X0: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    pid_i = tl.program_id(0).to(tl.int64)
    pid_j = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    if pid_j < pid_i:
        return  # the lower tiles are written, transposed, by the upper ones
    ci = pid_i * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cj = pid_j * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    ri = tl.arange(0, BLOCK_R).to(tl.int64)
    i_mask = ci < N
    j_mask = cj < N
    r_lo = split * steps_per_split * BLOCK_R
    r_hi = tl.minimum(r_lo + steps_per_split * BLOCK_R, R)
    acc = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        r = r0 + ri
        r_mask = r < r_hi
        di = _load_diff(
            x_ptr,
            x0_ptr,
            r[:, None],
            ci[None, :],
            sx,
            sx0,
            r_mask[:, None] & i_mask[None, :],
            HAS_X0,
        )
        dj = _load_diff(
            x_ptr,
            x0_ptr,
            r[:, None],
            cj[None, :],
            sx,
            sx0,
            r_mask[:, None] & j_mask[None, :],
            HAS_X0,
        )
        acc = tl.dot(tl.trans(di), dj, acc, input_precision="ieee")
    ij = ci[:, None] * N + cj[None, :]
    ji = cj[:, None] * N + ci[None, :]
    ij_mask = i_mask[:, None] & j_mask[None, :]
    ji_mask = j_mask[:, None] & i_mask[None, :]
    if ACCUMULATE:
        alpha = tl.load(alpha_ptr)
        upd = acc.to(alpha.dtype) * alpha
        g = tl.load(dst_ptr + ij, mask=ij_mask)
        tl.store(dst_ptr + ij, g + upd, mask=ij_mask)
        if pid_j != pid_i:
            gt = tl.load(dst_ptr + ji, mask=ji_mask)
            tl.store(dst_ptr + ji, gt + tl.trans(upd), mask=ji_mask)
    else:
        base = dst_ptr + split * N * N
        tl.store(base + ij, acc, mask=ij_mask)
        if pid_j != pid_i:
            tl.store(base + ji, tl.trans(acc), mask=ji_mask)


# The interpreter (TRITON_INTERPRET=1, read when the kernel is decorated) runs on CPU
# tensors; compiled kernels need CUDA (or ROCm) tensors.
INTERPRETED = not isinstance(_gram_update_kernel, triton.runtime.JITFunction)

# Square G tiles and the rows walked per step.
BLOCK_N = 64
BLOCK_R = 32


def gram_update_triton(
    G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """In place ``G += alpha * (x - x0)^T (x - x0)`` (see the module docstring).

    Parameters
    ----------
    G : Tensor (n, n)
        float32 or float64, contiguous; updated in place and returned.
    x : Tensor (r, n)
        bfloat16, float16 or float32, inner stride 1 (row stride free).
    x0 : Tensor (r, n) or None
        Same dtype, shape and device as ``x``, inner stride 1; None means zero.
    alpha : float
        Scale of the update.
    """
    if x.dim() != 2 or x.dtype not in INPUT_DTYPES:
        raise ValueError(f"x: need a 2-D bf16/fp16/fp32 tensor, got {tuple(x.shape)} {x.dtype}")
    r, n = x.shape
    if x0 is not None and (x0.shape != x.shape or x0.dtype != x.dtype):
        raise ValueError(f"x0: need {tuple(x.shape)} {x.dtype}, got {tuple(x0.shape)} {x0.dtype}")
    for name, t in (("x", x), ("x0", x0)):
        if t is not None and n > 1 and t.stride(1) != 1:
            raise ValueError(f"{name}: inner stride must be 1, got {t.stride(1)}")
    if G.dtype not in (torch.float32, torch.float64) or not G.is_contiguous():
        raise ValueError(f"G: need contiguous float32 or float64, got {G.dtype}")
    if tuple(G.shape) != (n, n):
        raise ValueError(f"G: need shape {(n, n)}, got {tuple(G.shape)}")
    if not INTERPRETED and x.device.type != "cuda":
        raise ValueError(
            f"Triton kernels need GPU tensors, got {x.device} "
            "(set TRITON_INTERPRET=1 before importing to run them on CPU tensors)"
        )
    if r == 0 or n == 0:
        return G
    # Plan as a GEMM [n, n] = [n, r] @ [r, n]: square tiles, rows split when tiles are few.
    plan = gemm_plan(n, n, r, block_m=BLOCK_N, block_k=BLOCK_R)
    block_n, split = plan.block_m, plan.split  # block_m == block_n: both from n
    tiles = cdiv(n, block_n)
    alpha_t = torch.tensor([alpha], dtype=G.dtype, device=G.device)
    dst = G
    if split > 1:
        dst = torch.empty(split, n, n, dtype=torch.float32, device=G.device)
    _gram_update_kernel[(tiles, tiles, split)](
        x,
        x0 if x0 is not None else x,
        dst,
        alpha_t,
        r,
        n,
        x.stride(0),
        x0.stride(0) if x0 is not None else 0,
        plan.steps_per_split,
        HAS_X0=x0 is not None,
        ACCUMULATE=split == 1,
        BLOCK_N=block_n,
        BLOCK_R=plan.block_k,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    if split > 1:
        total = dst.sum(dim=0, dtype=torch.float64)
        G.add_((total * alpha).to(G.dtype))
    return G
