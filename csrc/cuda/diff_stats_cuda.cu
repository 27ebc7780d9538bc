// Host launcher of the CUDA diff-statistics kernels; see diff_stats_cuda.h.
#include "diff_stats_cuda.h"

#include <atomic>

#include "diff_stats_kernels.cuh"

namespace paramgeom {
namespace {

typedef void (*MainKernel)(const void*, const void*, pg_i64, pg_i64, pg_i64, pg_i64,
                           DiffStatsParams, BlockScales, DiffAccum*, PartialRow*, pg_i64*,
                           double*);

// Indexed by kernel id (plan::kDiffStatsKernelNames holds their names, in the same order).
constexpr MainKernel kMainKernels[plan::kDiffStatsKernels] = {
    &paramgeom_diff_stats_f32,      &paramgeom_diff_stats_f32_tols8,
    &paramgeom_diff_stats_f32_cast, &paramgeom_diff_stats_f32_cast_tols8,
    &paramgeom_diff_stats_bf16,     &paramgeom_diff_stats_bf16_tols8,
    nullptr,                        nullptr,
    &paramgeom_diff_stats_f16,      &paramgeom_diff_stats_f16_tols8,
    &paramgeom_diff_stats_f16_cast, &paramgeom_diff_stats_f16_cast_tols8,
    &paramgeom_diff_stats_f8e4m3,   &paramgeom_diff_stats_f8e4m3_tols8,
    nullptr,                        nullptr,
    &paramgeom_diff_stats_f8e5m2,   &paramgeom_diff_stats_f8e5m2_tols8,
    nullptr,                        nullptr,
    &paramgeom_diff_stats_f8e4m3_scaled, &paramgeom_diff_stats_f8e4m3_scaled_tols8,
    &paramgeom_diff_stats_f8e5m2_scaled, &paramgeom_diff_stats_f8e5m2_scaled_tols8,
};

}  // namespace

int diff_stats_cuda_sm_count(int device) {
  static std::atomic<int> cache[64];
  const bool cached = device >= 0 && device < 64;
  if (cached) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();  // do not leave the error for the next caller
    return 0;
  }
  if (cached) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

int diff_stats_cuda(const DiffStatsArgs& args, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  const DiffStatsParams& p = args.params;
  if (args.dtype < kFloat32 || args.dtype > kFloat8E5M2) return kBadDType;
  const bool scaled = args.scales.scale0 != nullptr;
  if (scaled != (args.scales.scale1 != nullptr)) return kBadArgument;
  if (scaled && (args.scales.row0 < 0 || args.scales.stride0 < 0 || args.scales.stride1 < 0))
    return kBadArgument;
  const int kid =
      plan::diff_stats_kernel_id(args.dtype, p.cast_bf16 != 0, p.n_rel, p.n_abs, scaled);
  const bool per_row = args.row_changed != nullptr;
  if (kid < 0 || args.rows < 0 || args.cols < 0 || args.counts == nullptr ||
      args.sums == nullptr || per_row != (args.row_sq_delta != nullptr) ||
      (p.changed_index != kEqual && p.changed_index != kRel0) ||
      (args.cols > 0 && args.rows > (pg_i64(1) << 62) / args.cols))
    return kBadArgument;
  const pg_i64 rows = args.rows, cols = args.cols;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) {
    if (cuda_error) *cuda_error = err;
    return kCudaError;
  }
  const plan::DiffStatsLaunch launch =
      plan::diff_stats_launch(rows, cols, per_row, diff_stats_cuda_sm_count(device));
  const pg_i64 groups = launch.groups;
  const size_t needed = static_cast<size_t>(launch.workspace_bytes);
  if (workspace_bytes < needed || (needed > 0 && workspace == nullptr)) return kBadArgument;

  DiffAccum* partials = static_cast<DiffAccum*>(workspace);
  PartialRow* slots =
      per_row ? reinterpret_cast<PartialRow*>(static_cast<char*>(workspace) + launch.slots_offset)
              : nullptr;
  if (groups > 0) {
    kMainKernels[kid]<<<launch.blocks, plan::kDiffStatsThreads, 0, stream>>>(
        args.w0, args.w1, rows, cols, args.stride0, args.stride1, p, args.scales, partials,
        slots, args.row_changed, args.row_sq_delta);
    if (per_row)
      paramgeom_diff_stats_rows_fixup<<<launch.fixup_blocks, plan::kDiffStatsThreads, 0,
                                        stream>>>(slots, rows, cols, args.row_changed,
                                                  args.row_sq_delta);
  } else if (per_row && rows > 0) {  // rows of zero columns: nothing changed
    err = cudaMemsetAsync(args.row_changed, 0, rows * sizeof(pg_i64), stream);
    if (err == cudaSuccess)
      err = cudaMemsetAsync(args.row_sq_delta, 0, rows * sizeof(double), stream);
  }
  if (err == cudaSuccess) {
    paramgeom_diff_stats_final<<<1, plan::kDiffStatsThreads, 0, stream>>>(partials, groups,
                                                                   args.counts, args.sums);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) {
    if (cuda_error) *cuda_error = err;
    return kCudaError;
  }
  return kOk;
}

}  // namespace paramgeom
