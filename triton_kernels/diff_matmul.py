"""Fused difference product (DESIGN.md, kernel 3): ``out = (w1 - w0) @ x`` or
``out = (w1 - w0)^T @ x`` without materialising ``w1 - w0``.

In GEMM terms, ``out[M, N] = A[M, K] @ X[K, N]`` with ``A = D = w1 - w0`` (``M = m``,
``K = n``) or ``A = D^T`` (``M = n``, ``K = m``); the transpose is only a swap of the two
strides through which ``A``'s tiles are read, so both cases are one kernel. Each program
owns one ``BLOCK_M x BLOCK_N`` tile of ``out`` and walks ``K`` in ``BLOCK_K`` steps:

    a   = float32(w1[tile]) - float32(w0[tile])     exact widening, one fp32 subtraction
    acc += dot(a, x[tile])                          fp32 products and sums, IEEE (no TF32)

then stores ``acc``. When the output tiles are too few to fill the GPU (a narrow ``out``,
e.g. 4096 x 64), ``K`` is split across ``SPLIT`` programs per tile (``_utils.gemm_plan``);
each writes its fp32 partial tile and the partials are summed in float64 in split order.
Every value is written by exactly one program, in a fixed order of ``K`` steps: no
atomics, so the bits depend on the shape alone. Offsets are int64
(more than 2^31 elements work); masks cover ragged edges.
``paramgeom.reference.diff_matmul_ref`` (float64 torch) defines the result.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import cdiv, gemm_plan

WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _diff_matmul_kernel(
    w0_ptr,
    w1_ptr,
    x_ptr,  # fp32 [K, N], contiguous
    out_ptr,  # fp32 [M, N] (or [SPLIT, M, N] partials), contiguous
    M,
    N,
    K,
    s0_m,  # strides of A = (w1 - w0) or its transpose, read through w0 ...
    s0_k,
    s1_m,  # ... and through w1
    s1_k,
    steps_per_split,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles share the same x column tiles while they are hot.
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_m
    pid_n = (pid % (GROUP_M * tiles_n)) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K).to(tl.int64)
    m_mask = rm < M
    n_mask = rn < N
    a0 = w0_ptr + rm[:, None] * s0_m
    a1 = w1_ptr + rm[:, None] * s1_m
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_lo = split * steps_per_split * BLOCK_K
    k_hi = tl.minimum(k_lo + steps_per_split * BLOCK_K, K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k = k0 + rk
        k_mask = k < k_hi
        a_mask = m_mask[:, None] & k_mask[None, :]
        u = tl.load(a0 + k[None, :] * s0_k, mask=a_mask, other=0.0).to(tl.float32)
        v = tl.load(a1 + k[None, :] * s1_k, mask=a_mask, other=0.0).to(tl.float32)
        xt = tl.load(
            x_ptr + k[:, None] * N + rn[None, :],
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(v - u, xt, acc, input_precision="ieee")
    tl.store(
        out_ptr + split * M * N + rm[:, None] * N + rn[None, :],
        acc,
        mask=m_mask[:, None] & n_mask[None, :],
    )


# The interpreter (TRITON_INTERPRET=1, read when the kernel is decorated) runs on CPU
# tensors; compiled kernels need CUDA (or ROCm) tensors.
INTERPRETED = not isinstance(_diff_matmul_kernel, triton.runtime.JITFunction)


def diff_matmul_triton(
    w0: torch.Tensor,
    w1: torch.Tensor,
    x: torch.Tensor,
    transpose: bool,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out = (w1 - w0) @ x``, or ``(w1 - w0)^T @ x`` with ``transpose`` (see the module
    docstring).

    Parameters
    ----------
    w0, w1 : Tensor (m, n)
        bfloat16, float16 or float32 (the same), same device; any strides (inner stride 1
        reads fastest).
    x : Tensor
        float32, contiguous, (n, k) or (m, k) with ``transpose``.
    transpose : bool
        Multiply by the transpose of the difference.
    out : Tensor
        float32, contiguous, (m, k) or (n, k) with ``transpose``; overwritten and returned.
    """
    for name, t in (("w0", w0), ("w1", w1), ("x", x), ("out", out)):
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(t.shape)}")
    if w0.shape != w1.shape or w0.dtype != w1.dtype or w0.dtype not in WEIGHT_DTYPES:
        raise ValueError(
            f"w0, w1: need one shape and one of {WEIGHT_DTYPES}, got "
            f"{tuple(w0.shape)} {w0.dtype} and {tuple(w1.shape)} {w1.dtype}"
        )
    m, n = w0.shape
    rows_m, inner = (n, m) if transpose else (m, n)
    cols = x.shape[1]
    if x.dtype != torch.float32 or not x.is_contiguous() or x.shape[0] != inner:
        raise ValueError(f"x: need contiguous float32 ({inner}, k), got {tuple(x.shape)}")
    if (
        out.dtype != torch.float32
        or not out.is_contiguous()
        or tuple(out.shape)
        != (
            rows_m,
            cols,
        )
    ):
        raise ValueError(f"out: need contiguous float32 {(rows_m, cols)}, got {tuple(out.shape)}")
    if not INTERPRETED and w0.device.type != "cuda":
        raise ValueError(
            f"Triton kernels need GPU tensors, got {w0.device} "
            "(set TRITON_INTERPRET=1 before importing to run them on CPU tensors)"
        )
    if rows_m == 0 or cols == 0:
        return out
    if inner == 0:
        return out.zero_()
    if transpose:
        s0 = (w0.stride(1), w0.stride(0))
        s1 = (w1.stride(1), w1.stride(0))
    else:
        s0 = (w0.stride(0), w0.stride(1))
        s1 = (w1.stride(0), w1.stride(1))
    plan = gemm_plan(rows_m, cols, inner)
    dst = out
    if plan.split > 1:
        dst = torch.empty(plan.split, rows_m, cols, dtype=torch.float32, device=out.device)
    grid = (cdiv(rows_m, plan.block_m) * cdiv(cols, plan.block_n), plan.split)
    _diff_matmul_kernel[grid](
        w0,
        w1,
        x,
        dst,
        rows_m,
        cols,
        inner,
        s0[0],
        s0[1],
        s1[0],
        s1[1],
        plan.steps_per_split,
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        BLOCK_K=plan.block_k,
        GROUP_M=plan.group_m,
        num_warps=plan.num_warps,
        num_stages=plan.num_stages,
    )
    if plan.split > 1:
        out.copy_(dst.sum(dim=0, dtype=torch.float64))
    return out
