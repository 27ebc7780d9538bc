// Host launcher of the CUDA diff-statistics kernels; see diff_stats_cuda.h.
#include "diff_stats_cuda.h"

#include <atomic>

#include "diff_stats_kernels.cuh"

namespace paramgeom {
namespace {

typedef void (*MainKernel)(const void*, const void*, pg_i64, pg_i64, pg_i64, pg_i64,
                           DiffStatsParams, DiffAccum*, PartialRow*, pg_i64*, double*);

struct MainEntry {
  const char* name;
  MainKernel kernel;
};

#define PG_ENTRY(NAME) MainEntry{#NAME, &NAME}
constexpr MainEntry kNone{nullptr, nullptr};
// Indexed by the kernel id of diff_stats_kernels.cuh: dtype * 4 + cast * 2 + tols8.
const MainEntry kMainKernels[20] = {
    PG_ENTRY(paramgeom_diff_stats_f32),         PG_ENTRY(paramgeom_diff_stats_f32_tols8),
    PG_ENTRY(paramgeom_diff_stats_f32_cast),    PG_ENTRY(paramgeom_diff_stats_f32_cast_tols8),
    PG_ENTRY(paramgeom_diff_stats_bf16),        PG_ENTRY(paramgeom_diff_stats_bf16_tols8),
    kNone,                                      kNone,
    PG_ENTRY(paramgeom_diff_stats_f16),         PG_ENTRY(paramgeom_diff_stats_f16_tols8),
    PG_ENTRY(paramgeom_diff_stats_f16_cast),    PG_ENTRY(paramgeom_diff_stats_f16_cast_tols8),
    PG_ENTRY(paramgeom_diff_stats_f8e4m3),      PG_ENTRY(paramgeom_diff_stats_f8e4m3_tols8),
    kNone,                                      kNone,
    PG_ENTRY(paramgeom_diff_stats_f8e5m2),      PG_ENTRY(paramgeom_diff_stats_f8e5m2_tols8),
    kNone,                                      kNone,
};
#undef PG_ENTRY

const MainEntry* main_entry(int dtype, bool cast_bf16, int n_rel, int n_abs) {
  if (dtype < kFloat32 || dtype > kFloat8E5M2 || n_rel < 0 || n_rel > kMaxTols || n_abs < 0 ||
      n_abs > kMaxTols)
    return nullptr;
  // Rounding to bf16 only changes fp32 and fp16 values (bf16 and fp8 values are bf16 values).
  const bool cast = cast_bf16 && (dtype == kFloat32 || dtype == kFloat16);
  const bool tols8 = n_rel > 1 || n_abs > 1;
  return &kMainKernels[dtype * 4 + (cast ? 2 : 0) + (tols8 ? 1 : 0)];
}

pg_i64 grid_cap(int sm_count) { return pg_i64(sm_count > 0 ? sm_count : 1) * kDiffStatsBlocksPerSm; }

}  // namespace

size_t diff_stats_cuda_workspace_bytes(pg_i64 rows, pg_i64 cols, bool per_row) {
  const size_t groups = static_cast<size_t>(num_groups(rows, cols));
  return groups * sizeof(DiffAccum) + (per_row ? 2 * groups * sizeof(PartialRow) : 0);
}

int diff_stats_cuda_num_blocks(pg_i64 rows, pg_i64 cols, int sm_count) {
  const pg_i64 groups = num_groups(rows, cols);
  return static_cast<int>(groups < grid_cap(sm_count) ? groups : grid_cap(sm_count));
}

int diff_stats_cuda_fixup_blocks(pg_i64 rows, pg_i64 cols, int sm_count) {
  const pg_i64 blocks = (num_groups(rows, cols) + kDiffStatsThreads - 1) / kDiffStatsThreads;
  return static_cast<int>(blocks < grid_cap(sm_count) ? blocks : grid_cap(sm_count));
}

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

const char* diff_stats_cuda_kernel_name(int dtype, bool cast_bf16, int n_rel, int n_abs) {
  const MainEntry* e = main_entry(dtype, cast_bf16, n_rel, n_abs);
  return e ? e->name : nullptr;
}

int diff_stats_cuda(const DiffStatsArgs& args, void* workspace, size_t workspace_bytes,
                    cudaStream_t stream, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  const DiffStatsParams& p = args.params;
  if (args.dtype < kFloat32 || args.dtype > kFloat8E5M2) return kBadDType;
  const MainEntry* entry = main_entry(args.dtype, p.cast_bf16 != 0, p.n_rel, p.n_abs);
  const bool per_row = args.row_changed != nullptr;
  if (entry == nullptr || args.rows < 0 || args.cols < 0 || args.counts == nullptr ||
      args.sums == nullptr || per_row != (args.row_sq_delta != nullptr) ||
      (p.changed_index != kEqual && p.changed_index != kRel0) ||
      (args.cols > 0 && args.rows > (pg_i64(1) << 62) / args.cols))
    return kBadArgument;
  const pg_i64 rows = args.rows, cols = args.cols;
  const pg_i64 groups = num_groups(rows, cols);
  const size_t needed = diff_stats_cuda_workspace_bytes(rows, cols, per_row);
  if (workspace_bytes < needed || (needed > 0 && workspace == nullptr)) return kBadArgument;

  DiffAccum* partials = static_cast<DiffAccum*>(workspace);
  PartialRow* slots =
      per_row ? reinterpret_cast<PartialRow*>(static_cast<char*>(workspace) +
                                              groups * sizeof(DiffAccum))
              : nullptr;
  cudaError_t err = cudaSuccess;
  if (groups > 0) {
    int device = 0;
    err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
      const int sm_count = diff_stats_cuda_sm_count(device);
      entry->kernel<<<diff_stats_cuda_num_blocks(rows, cols, sm_count), kDiffStatsThreads, 0,
                      stream>>>(args.w0, args.w1, rows, cols, args.stride0, args.stride1, p,
                                partials, slots, args.row_changed, args.row_sq_delta);
      if (per_row)
        paramgeom_diff_stats_rows_fixup<<<diff_stats_cuda_fixup_blocks(rows, cols, sm_count),
                                          kDiffStatsThreads, 0, stream>>>(
            slots, rows, cols, args.row_changed, args.row_sq_delta);
    }
  } else if (per_row && rows > 0) {  // rows of zero columns: nothing changed
    err = cudaMemsetAsync(args.row_changed, 0, rows * sizeof(pg_i64), stream);
    if (err == cudaSuccess)
      err = cudaMemsetAsync(args.row_sq_delta, 0, rows * sizeof(double), stream);
  }
  if (err == cudaSuccess) {
    paramgeom_diff_stats_final<<<1, kDiffStatsThreads, 0, stream>>>(partials, groups,
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
