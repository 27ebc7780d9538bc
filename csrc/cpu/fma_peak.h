// Measured fp32 FMA throughput of this CPU (all threads, registers only): the compute
// limit `paramgeom bench` reports the CPU products against.
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {

// GFLOP/s over `iterations` rounds of 16 AVX-512 FMA chains per thread; 0 on a CPU
// without AVX-512 (the caller then falls back to a GEMM-based limit).
double fma_peak_gflops(pg_i64 iterations, int num_threads);

}  // namespace paramgeom
