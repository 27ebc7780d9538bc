// The CPU's fp32 FMA throughput, measured: every thread runs independent AVX-512 FMA
// chains (more chains than FMA latency x pipes, so only throughput limits them) on
// registers alone. `paramgeom bench` reports products as a fraction of this, since the
// library GEMM torch calls may not reach it (on AMD CPUs MKL takes its AVX2 path).
// Built with the avx512 flags and reached only through diff_matmul_cpu_supported().
#include <immintrin.h>
#include <omp.h>

#include <chrono>

#include "paramgeom/common.h"

namespace paramgeom {

double fma_peak_gflops_avx512(pg_i64 iterations, int num_threads) {
  if (num_threads <= 0) num_threads = omp_get_max_threads();
  constexpr int kChains = 16;
  double sink = 0.0;
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(num_threads) reduction(+ : sink)
  {
    __m512 acc[kChains];
    const float seed = 1.0f + 1e-7f * static_cast<float>(omp_get_thread_num());
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(seed + 1e-6f * c);
    const __m512 mul = _mm512_set1_ps(0.999999f);
    const __m512 add = _mm512_set1_ps(1e-7f);
    for (pg_i64 i = 0; i < iterations; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    __m512 total = acc[0];
    for (int c = 1; c < kChains; ++c) total = _mm512_add_ps(total, acc[c]);
    sink += _mm512_reduce_add_ps(total);  // keeps the chains live
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double flop = 2.0 * 16 * kChains * static_cast<double>(iterations) * num_threads;
  return sink == -1.0 ? 0.0 : flop / s / 1e9;
}

}  // namespace paramgeom
