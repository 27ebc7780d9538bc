// The diff-statistics kernel for a generic target (flags: CMakeLists.txt), and the
// per-element "scalar" variant that runs the CUDA threads' arithmetic on the CPU.
#define PG_ISA_NS isa_generic
#include "diff_stats_cpu_impl.h"

namespace paramgeom {
int diff_stats_cpu_generic(const DiffStatsArgs& args, int num_threads) {
  return isa_generic::diff_stats<false>(args, num_threads);
}
int diff_stats_cpu_scalar(const DiffStatsArgs& args, int num_threads) {
  return isa_generic::diff_stats<true>(args, num_threads);
}
}  // namespace paramgeom
