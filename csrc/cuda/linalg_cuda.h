// Host entry points of the CUDA diff_matmul and gram_update kernels
// (csrc/cuda/diff_matmul_kernels.cuh, csrc/cuda/gram_update_kernels.cuh). Framework-free:
// device pointers, sizes, strides (in elements) and a stream in, a paramgeom::Status out.
// The launch plan (kernel choice, grid, split-K workspace) is paramgeom/launch_plan.h, which
// the cupy backend reads through paramgeom._C to run the same kernels built by NVRTC.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "paramgeom/launch_plan.h"

namespace paramgeom {

// `workspace` must hold plan::linalg_launch(P, Q, R).workspace_bytes bytes (0 when the plan
// has a single split; P, Q, R from plan::diff_matmul_dims / gram_update_dims).
int diff_matmul_cuda(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                     pg_i64 ld0, pg_i64 ld1, const float* x, pg_i64 k, bool transpose,
                     float* out, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                     cudaError_t* cuda_error = nullptr);

// In place G += alpha * (x - x0)^T (x - x0) on the current device. x, x0: (r, n) of `dtype`,
// columns contiguous, row strides ldx / ldx0; x0 may be nullptr (zero). G: (n, n), rows
// contiguous, fp32 (g_is_f64 false) or fp64. `workspace`: gram_update_cuda_workspace_bytes.
int gram_update_cuda(void* G, bool g_is_f64, const void* x, const void* x0, int dtype,
                     pg_i64 r, pg_i64 n, pg_i64 ldx, pg_i64 ldx0, double alpha, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream,
                     cudaError_t* cuda_error = nullptr);

}  // namespace paramgeom
