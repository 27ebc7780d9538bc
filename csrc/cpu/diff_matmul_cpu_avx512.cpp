// The fused difference product on AVX-512 (contract: diff_matmul_cpu.h). Built with the
// avx512 flags (CMakeLists.txt) and reached only through the run-time gate.
//
// Why a kernel of our own rather than difference tiles handed to torch's GEMM: the range
// finder's products are skinny (x has k + p <= 64 columns), where the library GEMM runs
// at a fraction of the FMA peak and every tile costs a call and a thread fork. Here one
// OpenMP region covers the whole product; each thread forms an fp32 difference tile in
// its cache and multiplies it by x with the register-blocked micro-kernel of
// panel_kernel_avx512.h.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "diff_matmul_cpu.h"
#include "dtype_dispatch.h"
#include "panel_kernel_avx512.h"

namespace paramgeom {
namespace {

using panel::round_up;
constexpr int kLanes = panel::Vec<float>::kLanes;
constexpr int kPad = panel::kPanelPad;
// Normal product: tiles of kRowsN x kColsN (fp32 384 KiB, plus the x panel, in L2).
constexpr pg_i64 kRowsN = 96;
constexpr pg_i64 kColsN = 1024;
// Transposed product: tiles of kRowsT rows (the reduction) x kColsT output columns.
constexpr pg_i64 kRowsT = 512;
constexpr pg_i64 kColsT = 192;
static_assert(kRowsN % kPad == 0 && kColsT % kPad == 0, "tiles must hold whole panels");

// tile[i * ld + j] = w1 - w0 over a rows x cols block; the compiler vectorises the row.
template <int kDType>
void form_tile(const typename BitTraits<kDType>::U* a, const typename BitTraits<kDType>::U* b,
               pg_i64 s0, pg_i64 s1, pg_i64 rows, pg_i64 cols, float* tile, pg_i64 ld) {
  for (pg_i64 i = 0; i < rows; ++i) {
    const typename BitTraits<kDType>::U* __restrict ra = a + i * s0;
    const typename BitTraits<kDType>::U* __restrict rb = b + i * s1;
    float* __restrict t = tile + i * ld;
    for (pg_i64 j = 0; j < cols; ++j) t[j] = decode_bits<kDType>(rb[j]) - decode_bits<kDType>(ra[j]);
  }
}

template <int kDType>
int run(const void* w0, const void* w1, pg_i64 m, pg_i64 n, pg_i64 s0, pg_i64 s1,
        const float* x, pg_i64 ldx, pg_i64 l, float* out, pg_i64 ldo, bool transpose,
        int num_threads) {
  using U = typename BitTraits<kDType>::U;
  const U* a = static_cast<const U*>(w0);
  const U* b = static_cast<const U*>(w1);
  const pg_i64 lp = round_up(l, kLanes);
  const pg_i64 inner = transpose ? m : n;
  const pg_i64 outer = transpose ? n : m;
  // x with its rows padded to whole vectors (zero columns), so no micro-kernel needs masks.
  std::vector<float> xp;
  try {
    xp.assign(static_cast<size_t>(inner * lp), 0.0f);
  } catch (const std::bad_alloc&) {
    return kOutOfMemory;
  }
  for (pg_i64 q = 0; q < inner; ++q) std::memcpy(&xp[q * lp], x + q * ldx, l * sizeof(float));

  const pg_i64 block = transpose ? kColsT : kRowsN;  // output rows per work item
  const pg_i64 items = (outer + block - 1) / block;
  int status = kOk;
#pragma omp parallel num_threads(num_threads) if (items > 1)
  {
    float* tile = nullptr;
    float* acc = nullptr;
    const pg_i64 tile_elems = transpose ? kRowsT * kColsT : kRowsN * kColsN;
    tile = static_cast<float*>(std::aligned_alloc(64, tile_elems * sizeof(float)));
    acc = static_cast<float*>(std::aligned_alloc(64, block * lp * sizeof(float)));
    if (tile == nullptr || acc == nullptr) {
#pragma omp atomic write
      status = kOutOfMemory;
    }
#pragma omp for schedule(static)
    for (pg_i64 it = 0; it < items; ++it) {
      if (tile == nullptr || acc == nullptr) continue;
      const pg_i64 o0 = it * block;
      const pg_i64 rows_out = std::min(block, outer - o0);
      const pg_i64 P = round_up(rows_out, kPad);
      std::memset(acc, 0, static_cast<size_t>(P * lp) * sizeof(float));
      if (!transpose) {
        // out[o0 : o0 + rows_out] = sum over column blocks of D[rows, cols] @ x[cols]
        if (P > rows_out) std::memset(tile + rows_out * kColsN, 0, (P - rows_out) * kColsN * sizeof(float));
        for (pg_i64 c0 = 0; c0 < n; c0 += kColsN) {
          const pg_i64 kc = std::min(kColsN, n - c0);
          form_tile<kDType>(a + o0 * s0 + c0, b + o0 * s1 + c0, s0, s1, rows_out, kc, tile, kColsN);
          panel::panels<float>(tile, kColsN, 1, P, kc, xp.data() + c0 * lp, lp, acc, lp, lp);
        }
      } else {
        // out[o0 : o0 + rows_out] = sum over row blocks of D[rows, cols]^T @ x[rows]
        for (pg_i64 r0 = 0; r0 < m; r0 += kRowsT) {
          const pg_i64 kr = std::min(kRowsT, m - r0);
          form_tile<kDType>(a + r0 * s0 + o0, b + r0 * s1 + o0, s0, s1, kr, rows_out, tile, kColsT);
          if (P > rows_out)
            for (pg_i64 i = 0; i < kr; ++i)
              std::memset(tile + i * kColsT + rows_out, 0, (P - rows_out) * sizeof(float));
          panel::panels<float>(tile, 1, kColsT, P, kr, xp.data() + r0 * lp, lp, acc, lp, lp);
        }
      }
      for (pg_i64 r = 0; r < rows_out; ++r)
        std::memcpy(out + (o0 + r) * ldo, acc + r * lp, l * sizeof(float));
    }
    std::free(tile);
    std::free(acc);
  }
  return status;
}

}  // namespace

int diff_matmul_cpu_avx512(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                           pg_i64 stride0, pg_i64 stride1, const float* x, pg_i64 ldx,
                           pg_i64 l, float* out, pg_i64 ldo, bool transpose, int num_threads) {
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  return with_storage_dtype(dtype, [&](auto d) {
    return run<decltype(d)::value>(w0, w1, m, n, stride0, stride1, x, ldx, l, out, ldo,
                                   transpose, num_threads);
  });
}

}  // namespace paramgeom
