// CUDA kernels of the fused difference product (DESIGN.md, kernel 3):
//   out = (w1 - w0) @ x          w0, w1: (m, n), x: (n, k) fp32, out: (m, k) fp32
//   out = (w1 - w0)^T @ x        x: (m, k) fp32, out: (n, k) fp32
// without materialising w1 - w0: each tile of the difference is formed in fp32 registers
// from the stored values and never leaves the block. Device code only; nvcc builds it into
// paramgeom._C_cuda (csrc/cuda/linalg_cuda.cu) and NVRTC builds it, unchanged, at run time
// (python/paramgeom/_backends/cupy.py, `-I <include dir> --std=c++17 --fmad=false`). It may
// include nothing but paramgeom headers. The tiling, split-K plan and accuracy argument are
// in paramgeom/linalg_tiles.h.
//
// Kernels (extern "C": cupy fetches them by name):
//   paramgeom_diff_matmul_<dt>[_t]   one (128 x 64) output tile and one reduction split per
//       block; <dt> in f32, bf16, f16 is the dtype of w0 / w1; _t: the transposed product.
//       Writes out directly (one split) or fp32 partials to the workspace.
//   paramgeom_diff_matmul_final      split-K: adds the partials in split order in fp64.
// All take (a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, P, Q, R, tiles_per_split, out, ldo,
// mode, alpha) with a1 = w1, a0 = w0, b1 = x, b0 = nullptr; see linalg_tiles.h.
#pragma once

#include "paramgeom/diff_matmul.h"
#include "paramgeom/linalg_tiles.h"

// Kernel id = dtype * 2 + transpose. NVRTC needs about a second per kernel, so the cupy
// backend compiles one module per kernel with -DPG_DIFF_MATMUL_ONLY=<id>; nvcc builds all.
#if defined(PG_DIFF_MATMUL_ONLY)
#define PG_DIFF_MATMUL_WANT(ID) (PG_DIFF_MATMUL_ONLY == (ID))
#else
#define PG_DIFF_MATMUL_WANT(ID) 1
#endif

#define PG_DIFF_MATMUL_KERNEL(NAME, DTYPE, TRANS)                                             \
  extern "C" __global__ void __launch_bounds__(paramgeom::linalg::kThreads, 2) NAME(         \
      const void* a1, const void* a0, pg_i64 lda1, pg_i64 lda0, const void* b1,              \
      const void* b0, pg_i64 ldb1, pg_i64 ldb0, pg_i64 P, pg_i64 Q, pg_i64 R,                \
      pg_i64 tiles_per_split, void* out, pg_i64 ldo, int mode, double alpha) {               \
    paramgeom::linalg::gemm_block<DTYPE, paramgeom::kFloat32, TRANS>(                         \
        a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, P, Q, R, tiles_per_split, out, ldo, mode,    \
        alpha);                                                                               \
  }

#if PG_DIFF_MATMUL_WANT(0)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_f32, paramgeom::kFloat32, false)
#endif
#if PG_DIFF_MATMUL_WANT(1)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_f32_t, paramgeom::kFloat32, true)
#endif
#if PG_DIFF_MATMUL_WANT(2)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_bf16, paramgeom::kBFloat16, false)
#endif
#if PG_DIFF_MATMUL_WANT(3)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_bf16_t, paramgeom::kBFloat16, true)
#endif
#if PG_DIFF_MATMUL_WANT(4)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_f16, paramgeom::kFloat16, false)
#endif
#if PG_DIFF_MATMUL_WANT(5)
PG_DIFF_MATMUL_KERNEL(paramgeom_diff_matmul_f16_t, paramgeom::kFloat16, true)
#endif

extern "C" __global__ void __launch_bounds__(paramgeom::linalg::kThreads)
    paramgeom_diff_matmul_final(const float* partials, pg_i64 splits, pg_i64 P, pg_i64 Q,
                                void* out, pg_i64 ldo, int mode, double alpha) {
  paramgeom::linalg::splitk_final(partials, splits, P, Q, out, ldo, mode, alpha);
}

#undef PG_DIFF_MATMUL_KERNEL
#undef PG_DIFF_MATMUL_WANT
