// Host entry point of the fused CPU difference product (DESIGN.md, kernel 3):
//   out = (w1 - w0) @ x          (transpose = false; x: n x l, out: m x l)
//   out = (w1 - w0)^T @ x        (transpose = true;  x: m x l, out: n x l)
// The difference is formed in fp32 (exact widening, one subtraction) one cache-sized tile
// at a time and consumed there by a register-blocked AVX-512 micro-kernel; the full
// difference never exists. Each output element is summed in one fixed order (tile by
// tile, row by row within a tile), so the bits do not depend on the thread count.
#pragma once

#include "paramgeom/diff_matmul.h"

namespace paramgeom {

// True when this CPU runs the kernel (AVX-512 F, BW, DQ and VL); otherwise
// diff_matmul_cpu returns kBadArgument and callers use another path.
bool diff_matmul_cpu_supported();

// w0/w1: storage bits of `dtype`, m x n, rows `stride0`/`stride1` elements apart (inner
// stride 1). x: fp32, rows `ldx` apart, l columns. out: fp32, rows `ldo` apart; written,
// not accumulated into. Returns a paramgeom::Status.
int diff_matmul_cpu(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                    pg_i64 stride0, pg_i64 stride1, const float* x, pg_i64 ldx, pg_i64 l,
                    float* out, pg_i64 ldo, bool transpose, int num_threads);

}  // namespace paramgeom
