// Host entry points of the CUDA diff_matmul and gram_update kernels
// (csrc/cuda/diff_matmul_kernels.cuh, csrc/cuda/gram_update_kernels.cuh). Framework-free:
// device pointers, sizes, strides (in elements) and a stream in, a paramgeom::Status out.
// The launch plan (kernel choice, grid, split-K workspace) is paramgeom::linalg::split_plan,
// mirrored in python/paramgeom/_backends/cupy.py, which runs the same kernels built by NVRTC.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "paramgeom/linalg_tiles.h"

namespace paramgeom {

// Bytes of device workspace one call needs (0 when the plan has a single split). Shape only.
size_t diff_matmul_cuda_workspace_bytes(pg_i64 m, pg_i64 n, pg_i64 k, bool transpose);
size_t gram_update_cuda_workspace_bytes(pg_i64 r, pg_i64 n);

// Kernel names the launchers use, or nullptr for a dtype other than fp32 / bf16 / fp16.
const char* diff_matmul_cuda_kernel_name(int dtype, bool transpose);
const char* gram_update_cuda_kernel_name(int dtype);

// Blocks of the split-K final kernel for a (P, Q) output (grid-stride; never changes bits).
int linalg_cuda_final_blocks(pg_i64 P, pg_i64 Q);

// out = (w1 - w0) @ x, or (w1 - w0)^T @ x with `transpose`, on the current device.
// w0, w1: (m, n) of `dtype`, columns contiguous, row strides ld0 / ld1; x: fp32 (n, k), or
// (m, k) with transpose, rows contiguous; out: fp32 (m, k), or (n, k), rows contiguous,
// overwritten. `workspace` must hold diff_matmul_cuda_workspace_bytes(...) bytes.
// Returns kOk, kBadDType, kBadArgument or kCudaError (then *cuda_error says which).
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
