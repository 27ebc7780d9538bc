// Host entry point of the CUDA diff-statistics kernels (csrc/cuda/diff_stats_kernels.cuh).
// Framework-free: device pointers, sizes, strides and a stream in, a paramgeom::Status out.
// The same launch plan (kernel choice, grid sizes, workspace layout) is mirrored in
// python/paramgeom/_backends/cupy.py, which runs the same kernels compiled by NVRTC.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "paramgeom/diff_stats.h"

namespace paramgeom {

constexpr int kDiffStatsThreads = 256;   // threads per block of every kernel
constexpr int kDiffStatsBlocksPerSm = 4; // grid cap per SM (the bits never depend on it)

// Bytes of device workspace one call needs: one DiffAccum per group of kGroupElems
// elements, plus two PartialRow slots per group in per-row mode. It depends on the shape
// only (0 for an empty view).
size_t diff_stats_cuda_workspace_bytes(pg_i64 rows, pg_i64 cols, bool per_row);

// Blocks of the main pass (grid-stride over groups) and of the per-row fix-up (one thread
// per group) on a device with `sm_count` multiprocessors.
int diff_stats_cuda_num_blocks(pg_i64 rows, pg_i64 cols, int sm_count);
int diff_stats_cuda_fixup_blocks(pg_i64 rows, pg_i64 cols, int sm_count);

// Multiprocessor count of a device (cached), or 0 when the runtime cannot tell.
int diff_stats_cuda_sm_count(int device);

// Name of the main-pass kernel the launcher uses for these options, or nullptr for a bad
// dtype or tolerance count. Ids and names are listed in diff_stats_kernels.cuh.
const char* diff_stats_cuda_kernel_name(int dtype, bool cast_bf16, int n_rel, int n_abs);

// One fused pass over args.w0 / args.w1 on the current device, enqueued on `stream`.
// args.counts, args.sums and the optional row outputs are device pointers; `workspace`
// must hold diff_stats_cuda_workspace_bytes(...) bytes. Returns kOk, kBadDType,
// kBadArgument or kCudaError (then *cuda_error, when given, says which).
int diff_stats_cuda(const DiffStatsArgs& args, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream, cudaError_t* cuda_error = nullptr);

}  // namespace paramgeom
