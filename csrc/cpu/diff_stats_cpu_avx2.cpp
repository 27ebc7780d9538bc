// The diff-statistics kernel built for the avx2 instruction set (flags: CMakeLists.txt).
#define PG_ISA_NS isa_avx2
#include "diff_stats_cpu_impl.h"

namespace paramgeom {
int diff_stats_cpu_avx2(const DiffStatsArgs& args, int num_threads) {
  return isa_avx2::diff_stats<false>(args, num_threads);
}
}  // namespace paramgeom
