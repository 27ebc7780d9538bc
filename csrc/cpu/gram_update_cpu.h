// Host entry point of the CPU streaming Gram update (DESIGN.md, kernel 2):
//   G += alpha * (x - x0)^T (x - x0)      (x0 == nullptr: the Gram of x)
// in float64: the difference is formed in fp64 one row block at a time (exact for every
// storage format) and multiplied by the AVX-512 micro-kernel of panel_kernel_avx512.h,
// upper-triangle blocks only, each block's increment added to G at both (I, J) and
// (J, I): half the flops of a full product, and G stays exactly symmetric. Every entry
// is summed in one fixed order, so the bits do not depend on the thread count.
#pragma once

#include "paramgeom/gram_update.h"

namespace paramgeom {

// True when this CPU runs the kernel (AVX-512 F, BW, DQ and VL); otherwise
// gram_update_cpu returns kBadArgument and callers use another path.
bool gram_update_cpu_supported();

// x / x0: storage bits of `dtype`, r x n, rows `stride_x` / `stride_x0` elements apart
// (inner stride 1); x0 may be null. G: float64 n x n, rows `ldg` apart, updated in place.
int gram_update_cpu(const void* x, const void* x0, int dtype, pg_i64 r, pg_i64 n,
                    pg_i64 stride_x, pg_i64 stride_x0, double alpha, double* G, pg_i64 ldg,
                    int num_threads);

}  // namespace paramgeom
