// The CPU streaming Gram update on AVX-512 (contract: gram_update_cpu.h). Built with the
// avx512 flags (CMakeLists.txt) and reached only through the run-time gate.
//
// Per block of kRowsK rows: all threads form the float64 difference D (kRowsK x n,
// columns padded with zeros to whole kBlock blocks), then share out the upper-triangle
// blocks (I <= J) of D^T D; each block is computed into a thread-local kBlock x kBlock
// buffer by the panel micro-kernel and added, times alpha, to G[I, J] and to G[J, I]^T.
// Each entry of G is written by one block per row block, and row blocks run in order,
// so the summation order is fixed whatever the threads and their schedule.
#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "gram_update_cpu.h"
#include "dtype_dispatch.h"
#include "panel_kernel_avx512.h"

namespace paramgeom {
namespace {

using panel::round_up;
constexpr pg_i64 kRowsK = 512;  // rows of D per step (the reduction): 256 / 1024 measured slower
constexpr pg_i64 kBlock = 96;   // G blocks are kBlock x kBlock (72 KiB of float64)
static_assert(kBlock % panel::kPanelPad == 0 && kBlock % 32 == 0, "whole panels and chunks");

template <int kDType>
int run(const void* xv, const void* x0v, pg_i64 r, pg_i64 n, pg_i64 sx, pg_i64 sx0,
        double alpha, double* G, pg_i64 ldg, int num_threads) {
  using U = typename BitTraits<kDType>::U;
  const U* x = static_cast<const U*>(xv);
  const U* x0 = static_cast<const U*>(x0v);
  const pg_i64 ld = round_up(n, kBlock);
  const pg_i64 nb = ld / kBlock;
  const pg_i64 items = nb * (nb + 1) / 2;
  // Zero-filled once: the padding columns [n, ld) stay zero for every row block.
  double* D = static_cast<double*>(std::calloc(static_cast<size_t>(kRowsK * ld), sizeof(double)));
  if (D == nullptr) return kOutOfMemory;
  // The upper-triangle block of each work item, in row-major order of (I, J).
  pg_i64* bi = static_cast<pg_i64*>(std::malloc(static_cast<size_t>(2 * items) * sizeof(pg_i64)));
  if (bi == nullptr) {
    std::free(D);
    return kOutOfMemory;
  }
  for (pg_i64 I = 0, it = 0; I < nb; ++I)
    for (pg_i64 J = I; J < nb; ++J, ++it) bi[2 * it] = I, bi[2 * it + 1] = J;

  int status = kOk;
#pragma omp parallel num_threads(num_threads)
  {
    double* local =
        static_cast<double*>(std::aligned_alloc(64, kBlock * kBlock * sizeof(double)));
    if (local == nullptr) {
#pragma omp atomic write
      status = kOutOfMemory;
    }
    // G is updated in place: every thread's buffer must exist before any thread writes,
    // so that an allocation failure leaves G as it was.
#pragma omp barrier
    int seen;
#pragma omp atomic read
    seen = status;
    for (pg_i64 k0 = 0; seen == kOk && k0 < r; k0 += kRowsK) {
      const pg_i64 kr = std::min(kRowsK, r - k0);
#pragma omp for schedule(static)
      for (pg_i64 i = 0; i < kr; ++i) {
        const U* __restrict a = x + (k0 + i) * sx;
        double* __restrict d = D + i * ld;
        if (x0 == nullptr) {
          for (pg_i64 j = 0; j < n; ++j) d[j] = static_cast<double>(decode_bits<kDType>(a[j]));
        } else {
          const U* __restrict b = x0 + (k0 + i) * sx0;
          for (pg_i64 j = 0; j < n; ++j)
            d[j] = static_cast<double>(decode_bits<kDType>(a[j])) -
                   static_cast<double>(decode_bits<kDType>(b[j]));
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (pg_i64 it = 0; it < items; ++it) {
        const pg_i64 I = bi[2 * it], J = bi[2 * it + 1];
        std::memset(local, 0, kBlock * kBlock * sizeof(double));
        // local[p, c] = sum_q D[q, I*kBlock + p] * D[q, J*kBlock + c]
        panel::panels<double>(D + I * kBlock, 1, ld, kBlock, kr, D + J * kBlock, ld, local,
                              kBlock, kBlock);
        const pg_i64 p_end = std::min(kBlock, n - I * kBlock);
        const pg_i64 c_end = std::min(kBlock, n - J * kBlock);
        for (pg_i64 p = 0; p < p_end; ++p) {
          double* __restrict g = G + (I * kBlock + p) * ldg + J * kBlock;
          const double* __restrict l = local + p * kBlock;
          for (pg_i64 c = 0; c < c_end; ++c) g[c] += alpha * l[c];
        }
        if (I != J) {
          for (pg_i64 c = 0; c < c_end; ++c) {
            double* __restrict g = G + (J * kBlock + c) * ldg + I * kBlock;
            for (pg_i64 p = 0; p < p_end; ++p) g[p] += alpha * local[p * kBlock + c];
          }
        }
      }
    }
    std::free(local);
  }
  std::free(bi);
  std::free(D);
  return status;
}

}  // namespace

int gram_update_cpu_avx512(const void* x, const void* x0, int dtype, pg_i64 r, pg_i64 n,
                           pg_i64 stride_x, pg_i64 stride_x0, double alpha, double* G,
                           pg_i64 ldg, int num_threads) {
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  return with_storage_dtype(dtype, [&](auto d) {
    return run<decltype(d)::value>(x, x0, r, n, stride_x, stride_x0, alpha, G, ldg,
                                   num_threads);
  });
}

}  // namespace paramgeom
