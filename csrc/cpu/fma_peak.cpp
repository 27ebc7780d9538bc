// Run-time gate of the FMA-throughput probe (the probe is compiled for AVX-512).
#include "fma_peak.h"

#include "diff_matmul_cpu.h"

namespace paramgeom {

#if defined(PARAMGEOM_X86_DISPATCH)
double fma_peak_gflops_avx512(pg_i64 iterations, int num_threads);
#endif

double fma_peak_gflops(pg_i64 iterations, int num_threads) {
#if defined(PARAMGEOM_X86_DISPATCH)
  if (iterations > 0 && diff_matmul_cpu_supported())
    return fma_peak_gflops_avx512(iterations, num_threads);
#endif
  (void)iterations, (void)num_threads;
  return 0.0;
}

}  // namespace paramgeom
