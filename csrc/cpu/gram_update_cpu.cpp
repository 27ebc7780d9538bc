// Run-time gate of the CPU Gram update: the kernel is compiled for AVX-512
// (gram_update_cpu_avx512.cpp) and only called on a CPU that has it.
#include "gram_update_cpu.h"

#include "diff_matmul_cpu.h"

namespace paramgeom {

#if defined(PARAMGEOM_X86_DISPATCH)
int gram_update_cpu_avx512(const void* x, const void* x0, int dtype, pg_i64 r, pg_i64 n,
                           pg_i64 stride_x, pg_i64 stride_x0, double alpha, double* G,
                           pg_i64 ldg, int num_threads);
#endif

bool gram_update_cpu_supported() { return diff_matmul_cpu_supported(); }

int gram_update_cpu(const void* x, const void* x0, int dtype, pg_i64 r, pg_i64 n,
                    pg_i64 stride_x, pg_i64 stride_x0, double alpha, double* G, pg_i64 ldg,
                    int num_threads) {
  if (r < 0 || n < 0 || ldg < n) return kBadArgument;
  if (!gram_update_cpu_supported()) return kBadArgument;
  if (r == 0 || n == 0) return kOk;
#if defined(PARAMGEOM_X86_DISPATCH)
  return gram_update_cpu_avx512(x, x0, dtype, r, n, stride_x, stride_x0, alpha, G, ldg,
                                num_threads);
#else
  (void)x, (void)x0, (void)dtype, (void)stride_x, (void)stride_x0, (void)alpha, (void)G;
  (void)num_threads;
  return kBadArgument;
#endif
}

}  // namespace paramgeom
