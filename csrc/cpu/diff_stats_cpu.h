// Host entry point of the OpenMP diff-statistics kernel. Same arguments as the CUDA
// launcher minus the stream; returns a paramgeom::Status.
#pragma once

#include "paramgeom/diff_stats.h"

namespace paramgeom {

// num_threads <= 0 means "OpenMP's default". isa: "" picks the best this CPU supports,
// otherwise one of "avx512", "avx2", "generic", or "scalar": the per-element rule of
// diff_stats.h exactly as the CUDA threads run it (tests use it to cover that arithmetic).
int diff_stats_cpu(const DiffStatsArgs& args, int num_threads, const char* isa);

// The instruction set `diff_stats_cpu(..., isa="")` would use on this CPU.
const char* diff_stats_cpu_best_isa();

}  // namespace paramgeom
