// CUDA kernels of the fused diff statistics (DESIGN.md, kernel 1). Device code only: this
// file is compiled by nvcc (included by diff_stats_cuda.cu) and, unchanged, by NVRTC at run
// time (python/paramgeom/_backends/cupy.py, with `-I <include dir> --std=c++17` and the generated
// paramgeom/contract.h as an in-memory header). It may
// include nothing but paramgeom headers, which are NVRTC-safe. Both builds pass --fmad=false,
// so every fp64 operation is rounded as written and the two builds return the same bits.
//
// Kernels (extern "C": cupy fetches them by name):
//   paramgeom_diff_stats_<dt>[_cast][_tols8]   one pass; one DiffAccum per group
//       <dt> in f32, f16, bf16, f8e4m3, f8e5m2; _cast (f32/f16 only: a bf16 round trip is
//       the identity on bf16 and fp8 values) rounds inputs to bf16; _tols8 takes up to 8
//       relative and 8 absolute tolerances, the plain kernel at most one of each.
//   paramgeom_diff_stats_<f8e4m3|f8e5m2>_scaled[_tols8]
//       block-scaled fp8 (BlockScales, paramgeom/diff_stats.h): each element is
//       scaled_element(decode(q), its block's scale row, its column), the value the host
//       path's dequantise-then-bf16 gives, read from the stored bytes in the same pass.
//   paramgeom_diff_stats_final                  one block: merges the group partials
//   paramgeom_diff_stats_rows_fixup             per-row mode: joins rows cut by groups
//
// Algorithm (the CPU kernel's, csrc/cpu/diff_stats_cpu_impl.h). The logical row-major index
// space of the (rows, cols) view is cut into groups of kGroupElems. Blocks of 256 threads
// take groups grid-stride. A group is a run of row pieces (the first and last may be parts of
// rows); pieces go round-robin to teams: one warp per piece when cols < kWideCols, the whole
// block otherwise. Inside a piece, chunk k (kVec elements, 16 bytes) belongs to lane
// k % team; a lane reads its chunks with 16-byte loads when both inputs are 16-byte aligned
// there and with scalar loads otherwise, in the same element order either way, so the bits
// never depend on alignment. Each lane accumulates a piece into a fp64 DiffAccum and merges
// it into its group accumulator; the block reduces those in a fixed order (warp shuffles,
// then warps in order) and writes the group partial to the workspace. The final kernel merges
// partials in a fixed order. Nothing depends on the grid size or the device: the result is a
// function of the shape alone. No float atomics anywhere.
//
// Per-row mode: a piece that is a whole row is written to the row outputs directly; a cut
// piece goes to its group's slot 2g (the group's first piece) or 2g+1 (its last). The fix-up
// kernel gives each cut row to the group where the row starts and adds its pieces in group
// order, as the CPU kernel does.
#pragma once

#include "paramgeom/diff_stats.h"
#include "paramgeom/launch_plan.h"

namespace paramgeom {
namespace cuda_kernels {

// Every kernel here runs blocks of exactly this many threads (the launch plan's).
constexpr int kThreads = plan::kDiffStatsThreads;
constexpr int kWarps = kThreads / 32;
constexpr pg_i64 kWideCols = 8192;  // rows at least this wide are read by the whole block

__device__ __forceinline__ pg_i64 min64(pg_i64 a, pg_i64 b) { return a < b ? a : b; }

// Counts a kernel with room for kRelCap / kAbsCap tolerances can make non-zero.
template <int kRelCap, int kAbsCap>
__device__ __forceinline__ bool count_used(int i) {
  return i < kRel0 + kRelCap || (i >= kAbs0 && i < kAbs0 + kAbsCap);
}

// The params with a compile-time number of tolerances, unused ones NaN (every test against
// NaN is false, so their counts stay 0). accumulate_terms then unrolls fully and, in the
// one-tolerance kernels, the accumulators stay in registers (ptxas: no stack frame; the
// _tols8 kernels keep some of it in local memory).
template <int kRelCap, int kAbsCap>
__device__ __forceinline__ DiffStatsParams padded_params(const DiffStatsParams& p) {
  const double nan = __longlong_as_double(0x7ff8000000000000LL);
  DiffStatsParams q;
  q.n_rel = kRelCap;
  q.n_abs = kAbsCap;
  q.cast_bf16 = p.cast_bf16;
  q.changed_index = p.changed_index;
#pragma unroll
  for (int i = 0; i < kMaxTols; ++i) {
    q.rel_tols[i] = i < p.n_rel ? p.rel_tols[i] : nan;
    q.abs_tols[i] = i < p.n_abs ? p.abs_tols[i] : nan;
  }
  return q;
}

// acc.counts[index] with a compile-time index per select, so acc can stay in registers.
__device__ __forceinline__ pg_i64 count_at(const DiffAccum& acc, int index) {
  pg_i64 v = 0;
#pragma unroll
  for (int i = 0; i < kNumCounts; ++i) v = i == index ? acc.counts[i] : v;
  return v;
}

// Fixed-order tree over the warp; lane 0 ends with the warp's total.
template <int kRelCap, int kAbsCap>
__device__ __forceinline__ void warp_reduce(DiffAccum& acc) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    DiffAccum other;
#pragma unroll
    for (int i = 0; i < kNumCounts; ++i)
      other.counts[i] = count_used<kRelCap, kAbsCap>(i)
                            ? static_cast<pg_i64>(__shfl_down_sync(
                                  0xffffffffu, static_cast<long long>(acc.counts[i]), offset))
                            : 0;
#pragma unroll
    for (int i = 0; i < kNumSums; ++i)
      other.sums[i] = __shfl_down_sync(0xffffffffu, acc.sums[i], offset);
    acc.merge(other);
  }
}

// Thread 0 ends with the block's total (warps merged in warp order). The caller must
// __syncthreads() before s_warp is used again.
template <int kRelCap, int kAbsCap>
__device__ __forceinline__ void block_reduce(DiffAccum& acc, DiffAccum* s_warp) {
  warp_reduce<kRelCap, kAbsCap>(acc);
  if ((threadIdx.x & 31) == 0) s_warp[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kWarps; ++w) acc.merge(s_warp[w]);
}

// Sums one piece's per-lane (changed, sq_delta) over the team; lane 0 of the team ends with
// the totals. `team` is uniform over the block, so the block barriers are safe.
__device__ __forceinline__ void team_sum(long long& changed, double& sq, int team,
                                         long long* s_changed, double* s_sq) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    changed += __shfl_down_sync(0xffffffffu, changed, offset);
    sq += __shfl_down_sync(0xffffffffu, sq, offset);
  }
  if (team == kThreads) {
    if ((threadIdx.x & 31) == 0) {
      s_changed[threadIdx.x >> 5] = changed;
      s_sq[threadIdx.x >> 5] = sq;
    }
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 1; w < kWarps; ++w) {
        changed += s_changed[w];
        sq += s_sq[w];
      }
    __syncthreads();
  }
}

// Element j of a 16-byte vector of kDType values (little-endian), decoded exactly.
template <int kDType>
__device__ __forceinline__ float vector_element(const uint4& v, int j) {
  const pg_u32 w[4] = {v.x, v.y, v.z, v.w};
  if constexpr (kDType == kFloat32) {
    return bits_to_float(w[j]);
  } else if constexpr (sizeof(typename Storage<kDType>::type) == 2) {
    return Storage<kDType>::decode(static_cast<pg_u16>(w[j >> 1] >> ((j & 1) * 16)));
  } else {
    return Storage<kDType>::decode(static_cast<pg_u8>(w[j >> 2] >> ((j & 3) * 8)));
  }
}

// The scale rows of one piece and the weight column of its first element. Unscaled
// kernels get nulls and never read them.
struct PieceScales {
  const float* row0;  // w0's scale row for the piece's row
  const float* row1;  // w1's
  pg_i64 col;         // column of the piece's first element
};

// One element pair at offset i of the piece: scaled (kScaled) exactly as the CPU kernel's
// scalar rule does it (scaled_element, shared through paramgeom/diff_stats.h), then
// classified and accumulated.
template <bool kCast, bool kScaled>
__device__ __forceinline__ void add_element(DiffAccum& acc, const DiffStatsParams& q, float a,
                                            float b, const PieceScales& s, pg_i64 i) {
  if constexpr (kScaled) {
    a = scaled_element(a, s.row0, s.col + i);
    b = scaled_element(b, s.row1, s.col + i);
  }
  accumulate_terms(acc, q, classify(a, b, kCast));
}

// This lane's share of one piece of `len` elements: chunks lane, lane + team, ... in order,
// then the trailing partial chunk (index nfull) if it is this lane's. A chunk is one 16-byte
// vector; each iteration of the aligned loop reads 16 elements per input (kLoads vectors).
template <int kDType, bool kCast, bool kScaled>
__device__ __forceinline__ void accumulate_piece(const typename Storage<kDType>::type* pa,
                                                 const typename Storage<kDType>::type* pb,
                                                 pg_i64 len, int lane, int team,
                                                 const DiffStatsParams& q,
                                                 const PieceScales& s, DiffAccum& acc) {
  typedef typename Storage<kDType>::type T;
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  constexpr int kLoads = 16 / kVec;
  const pg_i64 nfull = len / kVec;
  const bool aligned =
      ((reinterpret_cast<pg_u64>(pa) | reinterpret_cast<pg_u64>(pb)) & pg_u64(15)) == 0;
  if (aligned) {
    const uint4* va = reinterpret_cast<const uint4*>(pa);
    const uint4* vb = reinterpret_cast<const uint4*>(pb);
    for (pg_i64 k = lane; k < nfull; k += pg_i64(team) * kLoads) {
      uint4 xa[kLoads], xb[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const pg_i64 kk = k + pg_i64(u) * team;
        xa[u] = kk < nfull ? __ldg(va + kk) : make_uint4(0u, 0u, 0u, 0u);
        xb[u] = kk < nfull ? __ldg(vb + kk) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        if (k + pg_i64(u) * team < nfull) {
#pragma unroll
          for (int j = 0; j < kVec; ++j)
            add_element<kCast, kScaled>(acc, q, vector_element<kDType>(xa[u], j),
                                        vector_element<kDType>(xb[u], j), s,
                                        (k + pg_i64(u) * team) * kVec + j);
        }
      }
    }
  } else {
    for (pg_i64 k = lane; k < nfull; k += team) {
#pragma unroll 2
      for (int j = 0; j < kVec; ++j)
        add_element<kCast, kScaled>(acc, q, Storage<kDType>::decode(pa[k * kVec + j]),
                                    Storage<kDType>::decode(pb[k * kVec + j]), s, k * kVec + j);
    }
  }
  if (nfull * kVec < len && lane == static_cast<int>(nfull % team)) {
#pragma unroll 1
    for (pg_i64 i = nfull * kVec; i < len; ++i)
      add_element<kCast, kScaled>(acc, q, Storage<kDType>::decode(pa[i]),
                                  Storage<kDType>::decode(pb[i]), s, i);
  }
}

template <int kDType, bool kCast, bool kScaled, int kRelCap, int kAbsCap>
__device__ __forceinline__ void diff_stats_groups(const void* w0, const void* w1, pg_i64 rows,
                                                  pg_i64 cols, pg_i64 stride0, pg_i64 stride1,
                                                  const DiffStatsParams& params,
                                                  const BlockScales& scales,
                                                  DiffAccum* partials, PartialRow* slots,
                                                  pg_i64* row_changed, double* row_sq_delta) {
  typedef typename Storage<kDType>::type T;
  __shared__ DiffAccum s_warp[kWarps];
  __shared__ long long s_changed[kWarps];
  __shared__ double s_sq[kWarps];

  const T* a = static_cast<const T*>(w0);
  const T* b = static_cast<const T*>(w1);
  const pg_i64 n = rows * cols;
  const pg_i64 groups = num_groups(rows, cols);
  const bool per_row = row_changed != nullptr;
  const DiffStatsParams q = padded_params<kRelCap, kAbsCap>(params);
  const int team = cols >= kWideCols ? kThreads : 32;
  const int num_teams = kThreads / team;
  const int team_id = static_cast<int>(threadIdx.x) / team;
  const int lane = static_cast<int>(threadIdx.x) % team;

  for (pg_i64 g = blockIdx.x; g < groups; g += gridDim.x) {
    const pg_i64 start = g * kGroupElems;
    const pg_i64 end = min64(n, start + kGroupElems);
    const pg_i64 first_row = start / cols;
    const pg_i64 num_pieces = (end - 1) / cols - first_row + 1;
    DiffAccum acc;
    acc.clear();
    for (pg_i64 k = team_id; k < num_pieces; k += num_teams) {
      const pg_i64 r = first_row + k;
      const pg_i64 c = k == 0 ? start - first_row * cols : 0;
      const pg_i64 pos = r * cols + c;
      const pg_i64 len = min64(cols - c, end - pos);
      DiffAccum pacc;
      pacc.clear();
      PieceScales ps{nullptr, nullptr, c};
      if constexpr (kScaled) {
        ps.row0 = scale_row(scales.scale0, scales.stride0, scales.row0, r);
        ps.row1 = scale_row(scales.scale1, scales.stride1, scales.row0, r);
      }
      accumulate_piece<kDType, kCast, kScaled>(a + r * stride0 + c, b + r * stride1 + c, len,
                                               lane, team, q, ps, pacc);
      if (per_row) {
        long long changed = pacc.counts[kCount] - count_at(pacc, q.changed_index);
        double sq = pacc.sums[kSumSqDelta];
        team_sum(changed, sq, team, s_changed, s_sq);
        if (lane == 0) {
          if (c == 0 && len == cols) {
            row_changed[r] = changed;
            row_sq_delta[r] = sq;
          } else {
            PartialRow& s = slots[2 * g + (pos == start ? 0 : 1)];
            s.row = r;
            s.changed = changed;
            s.sq_delta = sq;
          }
        }
      }
      acc.merge(pacc);
    }
    block_reduce<kRelCap, kAbsCap>(acc, s_warp);
    if (threadIdx.x == 0) partials[g] = acc;
    __syncthreads();
  }
}

}  // namespace cuda_kernels
}  // namespace paramgeom

// Kernel id = dtype * 4 + cast * 2 + tols8, or 20 + (dtype - fp8 e4m3) * 2 + tols8 for the
// block-scaled fp8 reads (plan::diff_stats_kernel_id; the names are
// plan::kDiffStatsKernelNames). NVRTC needs about a second per kernel, so the cupy backend
// compiles one module per kernel with -DPG_DIFF_STATS_ONLY=<id>; nvcc builds all.
#if defined(PG_DIFF_STATS_ONLY)
#define PG_DIFF_STATS_WANT(ID) (PG_DIFF_STATS_ONLY == (ID))
#else
#define PG_DIFF_STATS_WANT(ID) 1
#endif

// Every main kernel has this one signature (the launchers keep one function-pointer type);
// unscaled kernels never read `scales`.
#define PG_DIFF_STATS_KERNEL(NAME, DTYPE, CAST, SCALED, REL_CAP, ABS_CAP)                      \
  extern "C" __global__ void __launch_bounds__(paramgeom::cuda_kernels::kThreads) NAME(       \
      const void* w0, const void* w1, pg_i64 rows, pg_i64 cols, pg_i64 stride0,               \
      pg_i64 stride1, paramgeom::DiffStatsParams params, paramgeom::BlockScales scales,       \
      paramgeom::DiffAccum* partials, paramgeom::PartialRow* slots, pg_i64* row_changed,      \
      double* row_sq_delta) {                                                                  \
    paramgeom::cuda_kernels::diff_stats_groups<DTYPE, CAST, SCALED, REL_CAP, ABS_CAP>(         \
        w0, w1, rows, cols, stride0, stride1, params, scales, partials, slots, row_changed,    \
        row_sq_delta);                                                                         \
  }

#if PG_DIFF_STATS_WANT(0)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f32, paramgeom::kFloat32, false, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(1)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f32_tols8, paramgeom::kFloat32, false, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(2)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f32_cast, paramgeom::kFloat32, true, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(3)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f32_cast_tols8, paramgeom::kFloat32, true, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(4)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_bf16, paramgeom::kBFloat16, false, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(5)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_bf16_tols8, paramgeom::kBFloat16, false, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(8)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f16, paramgeom::kFloat16, false, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(9)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f16_tols8, paramgeom::kFloat16, false, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(10)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f16_cast, paramgeom::kFloat16, true, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(11)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f16_cast_tols8, paramgeom::kFloat16, true, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(12)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e4m3, paramgeom::kFloat8E4M3, false, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(13)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e4m3_tols8, paramgeom::kFloat8E4M3, false, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(16)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e5m2, paramgeom::kFloat8E5M2, false, false, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(17)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e5m2_tols8, paramgeom::kFloat8E5M2, false, false, 8, 8)
#endif
#if PG_DIFF_STATS_WANT(20)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e4m3_scaled, paramgeom::kFloat8E4M3, false, true, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(21)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e4m3_scaled_tols8, paramgeom::kFloat8E4M3, false, true,
                     8, 8)
#endif
#if PG_DIFF_STATS_WANT(22)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e5m2_scaled, paramgeom::kFloat8E5M2, false, true, 1, 1)
#endif
#if PG_DIFF_STATS_WANT(23)
PG_DIFF_STATS_KERNEL(paramgeom_diff_stats_f8e5m2_scaled_tols8, paramgeom::kFloat8E5M2, false, true,
                     8, 8)
#endif

#undef PG_DIFF_STATS_KERNEL
#undef PG_DIFF_STATS_WANT

// Merges the `groups` partials of the pass above into the totals (kNumCounts int64 counts,
// kNumSums float64 sums). One block of kThreads; zero groups give all-zero totals.
extern "C" __global__ void __launch_bounds__(paramgeom::cuda_kernels::kThreads)
    paramgeom_diff_stats_final(const paramgeom::DiffAccum* partials, pg_i64 groups,
                               pg_i64* counts, double* sums) {
  using namespace paramgeom;
  __shared__ DiffAccum s_warp[cuda_kernels::kWarps];
  DiffAccum acc;
  acc.clear();
  for (pg_i64 i = threadIdx.x; i < groups; i += cuda_kernels::kThreads) acc.merge(partials[i]);
  cuda_kernels::block_reduce<kMaxTols, kMaxTols>(acc, s_warp);
  if (threadIdx.x == 0) {
    for (int i = 0; i < kNumCounts; ++i) counts[i] = acc.counts[i];
    for (int i = 0; i < kNumSums; ++i) sums[i] = acc.sums[i];
  }
}

// Per-row mode: one thread per group. The group that holds the start of a row cut by a group
// boundary owns that row: it takes the row's piece from its own slot (2g when the row starts
// the group, else 2g+1) and adds the first-piece slot 2h of every later group h the row
// reaches, in group order. Rows that are whole inside a group were written by the pass.
extern "C" __global__ void __launch_bounds__(paramgeom::cuda_kernels::kThreads)
    paramgeom_diff_stats_rows_fixup(const paramgeom::PartialRow* slots, pg_i64 rows,
                                    pg_i64 cols, pg_i64* row_changed, double* row_sq_delta) {
  using namespace paramgeom;
  const pg_i64 n = rows * cols;
  const pg_i64 groups = num_groups(rows, cols);
  const pg_i64 step = pg_i64(gridDim.x) * blockDim.x;
  for (pg_i64 g = pg_i64(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += step) {
    const pg_i64 start = g * kGroupElems;
    const pg_i64 end = cuda_kernels::min64(n, start + kGroupElems);
    const pg_i64 r = (end - 1) / cols;  // the row holding the group's last element
    const pg_i64 row_begin = r * cols;
    const pg_i64 row_end = row_begin + cols;
    if (row_begin < start || row_end <= end) continue;  // starts earlier, or ends here
    const PartialRow& own = slots[2 * g + (row_begin == start ? 0 : 1)];
    long long changed = own.changed;
    double sq = own.sq_delta;
    const pg_i64 last_group = (row_end - 1) / kGroupElems;
    for (pg_i64 h = g + 1; h <= last_group; ++h) {
      changed += slots[2 * h].changed;
      sq += slots[2 * h].sq_delta;
    }
    row_changed[r] = changed;
    row_sq_delta[r] = sq;
  }
}
