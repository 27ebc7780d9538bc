// Host entry point of the CPU difference-tile kernel: out = fp32(w1) - fp32(w0) for a 2-D
// block, both inputs widened exactly, one fp32 subtraction, one pass. The cpu backend's
// diff_matmul hands such cache-sized tiles to a GEMM (DESIGN.md, kernel 3).
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {

// w0/w1: storage bits of `dtype`, rows x cols, rows `stride0`/`stride1` elements apart;
// out: fp32, rows `out_stride` apart. Returns a paramgeom::Status.
int diff_tile_cpu(const void* w0, const void* w1, int dtype, pg_i64 rows, pg_i64 cols,
                  pg_i64 stride0, pg_i64 stride1, float* out, pg_i64 out_stride,
                  int num_threads);

}  // namespace paramgeom
