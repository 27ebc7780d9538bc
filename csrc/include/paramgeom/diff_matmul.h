// paramgeom/diff_matmul.h: the fused difference-product contract (DESIGN.md, kernel 3),
// shared by the AVX-512 kernel (csrc/cpu/diff_matmul_cpu.h) and the CUDA kernels
// (csrc/cuda/diff_matmul_kernels.cuh, via nvcc and via NVRTC); the torch reference
// (python/paramgeom/reference.py, diff_matmul_ref) defines the semantics.
//
//   out = (w1 - w0) @ x          transpose = false; w0, w1: m x n, x: n x k, out: m x k
//   out = (w1 - w0)^T @ x        transpose = true;                x: m x k, out: n x k
//
// w0 and w1 are read in their storage dtype (on a GPU: diff_matmul_cuda_reads) and decoded
// exactly to fp32 (common.h); each difference w1[i, j] - w0[i, j] is formed in fp32 from the
// two decoded values (exact for bf16 / fp16, one fp32 rounding for fp32) where it is
// consumed, so the full difference matrix never exists. x and out are fp32; out is
// overwritten, never accumulated into. Products and sums in fp32 or wider with explicit
// FMAs (no TF32, no reduced-precision tensor-core inputs): the result is within 1e-5
// relative (Frobenius) of the float64 product of the exact difference. Each output element is summed in an
// order fixed by the shape alone, so the bits do not depend on threads, grid or device.
//
// Layouts: rows of w0 / w1 are stride0 / stride1 elements apart (inner stride 1; the two
// may differ, as for slices of bigger matrices); x and out have contiguous rows.
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {

// Storage dtypes: the CPU kernel reads all five (common.h); the CUDA kernels read these
// (the API hands fp8 weights to a GPU dequantised).
PG_HD bool diff_matmul_cuda_reads(int dtype) {
  return dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16;
}

}  // namespace paramgeom
