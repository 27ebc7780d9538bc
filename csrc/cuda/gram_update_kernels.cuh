// CUDA kernels of the streaming Gram update (DESIGN.md, kernel 2), in place:
//   G += alpha * (x - x0)^T (x - x0)      x, x0: (r, n) (x0 optional: zero), G: (n, n)
// G is fp32 (the GPU accumulator) or fp64; each value alpha * v is added in fp64 and
// rounded once to G's dtype. Row blocks of one matrix may arrive one call at a time: the
// sum of the updates is the Gram of the whole. The difference is formed in fp32 registers
// tile by tile and never stored. Device code only; nvcc builds it into paramgeom._C_cuda
// (csrc/cuda/linalg_cuda.cu) and NVRTC builds it, unchanged, at run time
// (python/paramgeom/_backends/cupy.py). It may include nothing but paramgeom headers. The
// tiling, split-K plan and accuracy argument are in paramgeom/linalg_tiles.h; every tile of
// G is computed (not only the upper triangle), and the result is exactly symmetric.
//
// Kernels (extern "C": cupy fetches them by name):
//   paramgeom_gram_update_<dt>    <dt> in f32, bf16, f16: the dtype of x / x0. One (128 x 64)
//       tile of G and one reduction split (over the r rows) per block; updates G directly
//       (one split) or writes fp32 partials to the workspace.
//   paramgeom_gram_update_final   split-K: adds the partials in split order in fp64, then
//       updates G.
// All take (a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, P, Q, R, tiles_per_split, out, ldo,
// mode, alpha) with a1 = b1 = x, a0 = b0 = x0 (or nullptr); see linalg_tiles.h.
#pragma once

#include "paramgeom/gram_update.h"
#include "paramgeom/linalg_tiles.h"

// Kernel id = dtype. The cupy backend compiles one module per kernel with
// -DPG_GRAM_UPDATE_ONLY=<id>; nvcc builds all.
#if defined(PG_GRAM_UPDATE_ONLY)
#define PG_GRAM_UPDATE_WANT(ID) (PG_GRAM_UPDATE_ONLY == (ID))
#else
#define PG_GRAM_UPDATE_WANT(ID) 1
#endif

#define PG_GRAM_UPDATE_KERNEL(NAME, DTYPE)                                                    \
  extern "C" __global__ void __launch_bounds__(paramgeom::linalg::kThreads, 2) NAME(         \
      const void* a1, const void* a0, pg_i64 lda1, pg_i64 lda0, const void* b1,              \
      const void* b0, pg_i64 ldb1, pg_i64 ldb0, pg_i64 P, pg_i64 Q, pg_i64 R,                \
      pg_i64 tiles_per_split, void* out, pg_i64 ldo, int mode, double alpha) {               \
    paramgeom::linalg::gemm_block<DTYPE, DTYPE, true>(a1, a0, lda1, lda0, b1, b0, ldb1,      \
                                                      ldb0, P, Q, R, tiles_per_split, out,  \
                                                      ldo, mode, alpha);                     \
  }

#if PG_GRAM_UPDATE_WANT(0)
PG_GRAM_UPDATE_KERNEL(paramgeom_gram_update_f32, paramgeom::kFloat32)
#endif
#if PG_GRAM_UPDATE_WANT(1)
PG_GRAM_UPDATE_KERNEL(paramgeom_gram_update_bf16, paramgeom::kBFloat16)
#endif
#if PG_GRAM_UPDATE_WANT(2)
PG_GRAM_UPDATE_KERNEL(paramgeom_gram_update_f16, paramgeom::kFloat16)
#endif

extern "C" __global__ void __launch_bounds__(paramgeom::linalg::kThreads)
    paramgeom_gram_update_final(const float* partials, pg_i64 splits, pg_i64 P, pg_i64 Q,
                                void* out, pg_i64 ldo, int mode, double alpha) {
  paramgeom::linalg::splitk_final(partials, splits, P, Q, out, ldo, mode, alpha);
}

#undef PG_GRAM_UPDATE_KERNEL
#undef PG_GRAM_UPDATE_WANT
