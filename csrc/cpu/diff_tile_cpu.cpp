// The CPU difference-tile kernel (diff_tile_cpu.h): exact decode (common.h) and one fp32
// subtraction per element, rows split across OpenMP threads when the tile is large enough
// to pay for the fork.
#include "diff_tile_cpu.h"

#include <omp.h>

#include "dtype_dispatch.h"

namespace paramgeom {
namespace {

template <int kDType>
void run(const void* w0, const void* w1, pg_i64 rows, pg_i64 cols, pg_i64 s0, pg_i64 s1,
         float* out, pg_i64 so, int num_threads) {
  using U = typename BitTraits<kDType>::U;
  const U* a = static_cast<const U*>(w0);
  const U* b = static_cast<const U*>(w1);
  const bool parallel = rows > 1 && rows * cols >= (pg_i64(1) << 16);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (parallel)
  for (pg_i64 r = 0; r < rows; ++r) {
    const U* __restrict ra = a + r * s0;
    const U* __restrict rb = b + r * s1;
    float* __restrict ro = out + r * so;
    for (pg_i64 c = 0; c < cols; ++c) ro[c] = decode_bits<kDType>(rb[c]) - decode_bits<kDType>(ra[c]);
  }
}

}  // namespace

int diff_tile_cpu(const void* w0, const void* w1, int dtype, pg_i64 rows, pg_i64 cols,
                  pg_i64 stride0, pg_i64 stride1, float* out, pg_i64 out_stride,
                  int num_threads) {
  if (rows < 0 || cols < 0) return kBadArgument;
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  return with_storage_dtype(dtype, [&](auto d) {
    run<decltype(d)::value>(w0, w1, rows, cols, stride0, stride1, out, out_stride, num_threads);
    return static_cast<int>(kOk);
  });
}

}  // namespace paramgeom
