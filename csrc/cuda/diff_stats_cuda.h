// Host entry point of the CUDA diff-statistics kernels (csrc/cuda/diff_stats_kernels.cuh).
// Framework-free: device pointers, sizes, strides and a stream in, a paramgeom::Status out.
// The launch plan (kernel choice, grid sizes, workspace layout) is paramgeom/launch_plan.h,
// which the cupy backend reads through paramgeom._C to launch the same kernels (NVRTC).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "paramgeom/launch_plan.h"

namespace paramgeom {

// Multiprocessor count of a device (cached), or 0 when the runtime cannot tell.
int diff_stats_cuda_sm_count(int device);

// One fused pass over args.w0 / args.w1 on the current device, enqueued on `stream`.
// args.counts, args.sums and the optional row outputs are device pointers; `workspace`
// must hold plan::diff_stats_launch(...).workspace_bytes bytes. Returns kOk, kBadDType,
// kBadArgument or kCudaError (then *cuda_error, when given, says which).
int diff_stats_cuda(const DiffStatsArgs& args, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream, cudaError_t* cuda_error = nullptr);

}  // namespace paramgeom
