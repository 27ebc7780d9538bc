// paramgeom/gram_update.h: the streaming Gram-update contract (DESIGN.md, kernel 2), shared
// by the AVX-512 kernel (csrc/cpu/gram_update_cpu.h) and the CUDA kernels
// (csrc/cuda/gram_update_kernels.cuh, via nvcc and via NVRTC); the torch reference
// (python/paramgeom/reference.py, gram_update_ref) defines the semantics.
//
//   G += alpha * (x - x0)^T (x - x0)        x, x0: r x n (x0 null: zero), G: n x n
//
// x and x0 are read in their storage dtype (on a GPU: gram_update_cuda_reads) and decoded
// exactly; the difference is formed one row block at a time and never stored at full size.
// Accumulation: float64 on the CPU (the difference in fp64, exact for every storage
// format); on a GPU the difference in fp32 and products accumulated in fp32 within a block
// with explicit FMAs, split-K partials added in fp64, then alpha * tile added to G in G's
// dtype (fp32 or fp64).
// Row blocks may arrive one call at a time: the calls' sum is the Gram of the whole. Every
// entry of G is written (the full square) and G stays exactly symmetric; each entry is
// summed in an order fixed by the shape alone (bits independent of threads, grid, device).
//
// Layouts: rows of x / x0 are stride_x / stride_x0 elements apart (inner stride 1); G has
// rows ldg apart (contiguous on a GPU).
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {

// Storage dtypes: the CPU kernel reads all five (common.h); the CUDA kernels read these
// (the API hands fp8 weights to a GPU dequantised).
PG_HD bool gram_update_cuda_reads(int dtype) {
  return dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16;
}

}  // namespace paramgeom
