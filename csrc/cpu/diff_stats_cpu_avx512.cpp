// The diff-statistics kernel built for the avx512 instruction set (flags: CMakeLists.txt).
#define PG_ISA_NS isa_avx512
#include "diff_stats_cpu_impl.h"

namespace paramgeom {
int diff_stats_cpu_avx512(const DiffStatsArgs& args, int num_threads) {
  return isa_avx512::diff_stats<false>(args, num_threads);
}
}  // namespace paramgeom
