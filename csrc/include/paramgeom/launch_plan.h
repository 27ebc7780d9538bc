// paramgeom/launch_plan.h: how every CUDA kernel of csrc/cuda is launched, written once.
// Kernel ids and names, grid sizes and workspace layouts of diff_stats, diff_matmul and
// gram_update. Framework-free and NVRTC-safe (the kernel sources include it for their
// thread counts): the nvcc launchers (diff_stats_cuda.cu, linalg_cuda.cu) follow it, and
// the always-built CPU module paramgeom._C exports it (diff_stats_plan, diff_matmul_plan,
// gram_update_plan, ...) to the cupy backend, which launches the same kernels compiled by
// NVRTC. Every plan depends on the shape (and, for diff_stats' grid cap, the SM
// count) only; no result bit depends on the grid.
//
// Kernel ids select the module the cupy backend compiles (-DPG_<OP>_ONLY=<id>) and index the
// name tables below; the kernel sources instantiate the same names under the same ids.
#pragma once

#include "paramgeom/diff_matmul.h"
#include "paramgeom/diff_stats.h"
#include "paramgeom/gram_update.h"
#include "paramgeom/linalg_tiles.h"

namespace paramgeom {
namespace plan {

// ---- diff_stats (csrc/cuda/diff_stats_kernels.cuh) ------------------------------------
constexpr int kDiffStatsThreads = 256;   // threads per block of every diff_stats kernel
constexpr int kDiffStatsBlocksPerSm = 4; // grid cap per SM (the bits never depend on it)
// ids 0..19: dtype * 4 + cast * 2 + tols8; 20..23: block-scaled fp8 (BlockScales),
// 20 + (dtype - kFloat8E4M3) * 2 + tols8 (they always round to bf16).
constexpr int kDiffStatsKernels = 24;

// Indexed by kernel id; nullptr where no kernel exists (a bf16 round trip is the identity on
// bf16 and fp8 values, so those dtypes have no _cast variant).
constexpr const char* kDiffStatsKernelNames[kDiffStatsKernels] = {
    "paramgeom_diff_stats_f32",       "paramgeom_diff_stats_f32_tols8",
    "paramgeom_diff_stats_f32_cast",  "paramgeom_diff_stats_f32_cast_tols8",
    "paramgeom_diff_stats_bf16",      "paramgeom_diff_stats_bf16_tols8",
    nullptr,                          nullptr,
    "paramgeom_diff_stats_f16",       "paramgeom_diff_stats_f16_tols8",
    "paramgeom_diff_stats_f16_cast",  "paramgeom_diff_stats_f16_cast_tols8",
    "paramgeom_diff_stats_f8e4m3",    "paramgeom_diff_stats_f8e4m3_tols8",
    nullptr,                          nullptr,
    "paramgeom_diff_stats_f8e5m2",    "paramgeom_diff_stats_f8e5m2_tols8",
    nullptr,                          nullptr,
    "paramgeom_diff_stats_f8e4m3_scaled", "paramgeom_diff_stats_f8e4m3_scaled_tols8",
    "paramgeom_diff_stats_f8e5m2_scaled", "paramgeom_diff_stats_f8e5m2_scaled_tols8",
};
constexpr const char* kDiffStatsFinal = "paramgeom_diff_stats_final";
constexpr const char* kDiffStatsFixup = "paramgeom_diff_stats_rows_fixup";

// The main-pass kernel for these options, or -1 (bad dtype or tolerance count, or block
// scales on a dtype that is not fp8).
PG_HD int diff_stats_kernel_id(int dtype, bool cast_bf16, int n_rel, int n_abs, bool scaled) {
  if (dtype < kFloat32 || dtype > kFloat8E5M2 || n_rel < 0 || n_rel > kMaxTols || n_abs < 0 ||
      n_abs > kMaxTols)
    return -1;
  const bool tols8 = n_rel > 1 || n_abs > 1;
  if (scaled) {
    if (dtype != kFloat8E4M3 && dtype != kFloat8E5M2) return -1;
    return 20 + (dtype - kFloat8E4M3) * 2 + (tols8 ? 1 : 0);
  }
  const bool cast = cast_bf16 && (dtype == kFloat32 || dtype == kFloat16);
  return dtype * 4 + (cast ? 2 : 0) + (tols8 ? 1 : 0);
}

// One call's launches: the main pass over `groups` groups (grid-stride), the per-row fix-up
// (one thread per group) and the one-block final merge. Workspace: a DiffAccum per group,
// then, in per-row mode, two PartialRow slots per group at `slots_offset`.
struct DiffStatsLaunch {
  pg_i64 groups;
  int blocks;        // main pass
  int fixup_blocks;  // per-row fix-up
  pg_i64 slots_offset;
  pg_i64 workspace_bytes;
};

PG_HD pg_i64 diff_stats_grid_cap(int sm_count) {
  return pg_i64(sm_count > 0 ? sm_count : 1) * kDiffStatsBlocksPerSm;
}

PG_HD DiffStatsLaunch diff_stats_launch(pg_i64 rows, pg_i64 cols, bool per_row, int sm_count) {
  DiffStatsLaunch l;
  l.groups = num_groups(rows, cols);
  const pg_i64 cap = diff_stats_grid_cap(sm_count);
  l.blocks = static_cast<int>(l.groups < cap ? l.groups : cap);
  const pg_i64 fix = (l.groups + kDiffStatsThreads - 1) / kDiffStatsThreads;
  l.fixup_blocks = static_cast<int>(fix < cap ? fix : cap);
  l.slots_offset = l.groups * pg_i64(sizeof(DiffAccum));
  l.workspace_bytes = l.slots_offset + (per_row ? 2 * l.groups * pg_i64(sizeof(PartialRow)) : 0);
  return l;
}

// ---- diff_matmul and gram_update (csrc/cuda/{diff_matmul,gram_update}_kernels.cuh) -----
// Both are one split-K product C (P x Q) = A (P x R) B (R x Q) (paramgeom/linalg_tiles.h):
//   diff_matmul      P, Q, R = m, k, n;  transposed: n, k, m
//   gram_update      P, Q, R = n, n, r
constexpr int kDiffMatmulKernels = 6;  // ids: dtype * 2 + transpose (fp32, bf16, fp16)
constexpr const char* kDiffMatmulKernelNames[kDiffMatmulKernels] = {
    "paramgeom_diff_matmul_f32",  "paramgeom_diff_matmul_f32_t",
    "paramgeom_diff_matmul_bf16", "paramgeom_diff_matmul_bf16_t",
    "paramgeom_diff_matmul_f16",  "paramgeom_diff_matmul_f16_t",
};
constexpr const char* kDiffMatmulFinal = "paramgeom_diff_matmul_final";
constexpr int kGramUpdateKernels = 3;  // ids: dtype (fp32, bf16, fp16)
constexpr const char* kGramUpdateKernelNames[kGramUpdateKernels] = {
    "paramgeom_gram_update_f32",
    "paramgeom_gram_update_bf16",
    "paramgeom_gram_update_f16",
};
constexpr const char* kGramUpdateFinal = "paramgeom_gram_update_final";

PG_HD int diff_matmul_kernel_id(int dtype, bool transpose) {
  return diff_matmul_cuda_reads(dtype) ? dtype * 2 + (transpose ? 1 : 0) : -1;
}
PG_HD int gram_update_kernel_id(int dtype) { return gram_update_cuda_reads(dtype) ? dtype : -1; }

// The launches of one product: the main kernel on grid (tiles_p, tiles_q, splits) of
// linalg::kThreads, then, when splits > 1, the final kernel adding the fp32 partials of the
// workspace in split order on `final_blocks` blocks. `fits` is false when a grid dimension
// would exceed CUDA's limits (the launchers refuse such a shape).
struct LinalgLaunch {
  linalg::SplitPlan split;
  int final_blocks;
  pg_i64 workspace_bytes;
  bool fits;
};

PG_HD LinalgLaunch linalg_launch(pg_i64 P, pg_i64 Q, pg_i64 R) {
  LinalgLaunch l;
  l.split = linalg::split_plan(P, Q, R);
  l.workspace_bytes = linalg::split_workspace_bytes(P, Q, R);
  const pg_i64 blocks = linalg::ceil_div(P * Q, linalg::kThreads);
  const pg_i64 cap = pg_i64(1) << 16;
  l.final_blocks = static_cast<int>(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
  l.fits = l.split.tiles_p <= 0x7fffffff && l.split.tiles_q <= linalg::kMaxGridYZ &&
           l.split.splits <= linalg::kMaxGridYZ;
  return l;
}

// (P, Q, R) of each op.
PG_HD void diff_matmul_dims(pg_i64 m, pg_i64 n, pg_i64 k, bool transpose, pg_i64* P, pg_i64* Q,
                             pg_i64* R) {
  *P = transpose ? n : m;
  *Q = k;
  *R = transpose ? m : n;
}
PG_HD void gram_update_dims(pg_i64 r, pg_i64 n, pg_i64* P, pg_i64* Q, pg_i64* R) {
  *P = n;
  *Q = n;
  *R = r;
}

}  // namespace plan
}  // namespace paramgeom
