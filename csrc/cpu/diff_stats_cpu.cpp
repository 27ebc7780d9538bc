// Run-time choice of the diff-statistics kernel's instruction set. Wheels are built for a
// generic x86-64 target; the AVX2 and AVX-512 variants are compiled beside it and chosen
// here, so one wheel runs everywhere and uses what the CPU has.
#include "diff_stats_cpu.h"

#include <cstring>

namespace paramgeom {

int diff_stats_cpu_generic(const DiffStatsArgs& args, int num_threads);
int diff_stats_cpu_scalar(const DiffStatsArgs& args, int num_threads);
#if defined(PARAMGEOM_X86_DISPATCH)
int diff_stats_cpu_avx2(const DiffStatsArgs& args, int num_threads);
int diff_stats_cpu_avx512(const DiffStatsArgs& args, int num_threads);
#endif

const char* diff_stats_cpu_best_isa() {
#if defined(PARAMGEOM_X86_DISPATCH)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
#endif
  return "generic";
}

int diff_stats_cpu(const DiffStatsArgs& args, int num_threads, const char* isa) {
  if (args.rows < 0 || args.cols < 0 || args.params.n_rel < 0 || args.params.n_rel > kMaxTols ||
      args.params.n_abs < 0 || args.params.n_abs > kMaxTols ||
      (args.row_changed == nullptr) != (args.row_sq_delta == nullptr))
    return kBadArgument;
  const char* best = diff_stats_cpu_best_isa();
  if (isa == nullptr || *isa == '\0') isa = best;
#if defined(PARAMGEOM_X86_DISPATCH)
  const bool has512 = std::strcmp(best, "avx512") == 0;
  const bool has2 = has512 || std::strcmp(best, "avx2") == 0;
  if (std::strcmp(isa, "avx512") == 0) return has512 ? diff_stats_cpu_avx512(args, num_threads) : kBadArgument;
  if (std::strcmp(isa, "avx2") == 0) return has2 ? diff_stats_cpu_avx2(args, num_threads) : kBadArgument;
#endif
  if (std::strcmp(isa, "generic") == 0) return diff_stats_cpu_generic(args, num_threads);
  if (std::strcmp(isa, "scalar") == 0) return diff_stats_cpu_scalar(args, num_threads);
  return kBadArgument;
}

}  // namespace paramgeom
