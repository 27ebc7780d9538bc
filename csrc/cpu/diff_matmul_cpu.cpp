// Run-time gate of the fused CPU difference product: the kernel itself is compiled for
// AVX-512 (diff_matmul_cpu_avx512.cpp) and only called on a CPU that has it.
#include "diff_matmul_cpu.h"

namespace paramgeom {

#if defined(PARAMGEOM_X86_DISPATCH)
int diff_matmul_cpu_avx512(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                           pg_i64 stride0, pg_i64 stride1, const float* x, pg_i64 ldx,
                           pg_i64 l, float* out, pg_i64 ldo, bool transpose, int num_threads);
#endif

bool diff_matmul_cpu_supported() {
#if defined(PARAMGEOM_X86_DISPATCH)
  // The same feature set the avx512 sources are compiled for (CMakeLists.txt): the
  // compiler may use any of it, e.g. 16-bit lanes (BW) in the bf16 decode.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

int diff_matmul_cpu(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                    pg_i64 stride0, pg_i64 stride1, const float* x, pg_i64 ldx, pg_i64 l,
                    float* out, pg_i64 ldo, bool transpose, int num_threads) {
  if (m <= 0 || n <= 0 || l <= 0 || ldx < l || ldo < l) return kBadArgument;
  if (!diff_matmul_cpu_supported()) return kBadArgument;
#if defined(PARAMGEOM_X86_DISPATCH)
  return diff_matmul_cpu_avx512(w0, w1, dtype, m, n, stride0, stride1, x, ldx, l, out, ldo,
                                transpose, num_threads);
#else
  (void)w0, (void)w1, (void)dtype, (void)stride0, (void)stride1, (void)x, (void)out;
  (void)transpose, (void)num_threads;
  return kBadArgument;
#endif
}

}  // namespace paramgeom
