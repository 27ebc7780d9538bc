// paramgeom/diff_stats.h: the fused diff-statistics contract (DESIGN.md, kernel 1), shared
// by the OpenMP kernel (csrc/diff_stats_cpu.cpp), the CUDA kernels
// (csrc/diff_stats_kernels.cuh, via nvcc and via NVRTC) and mirrored by the torch
// reference (python/paramgeom/reference.py), which defines the semantics.
//
// Per element, with a = w0, b = w1 decoded exactly to fp32 (and, with cast_bf16, rounded
// to bf16 first), then widened to fp64:
//   equal         a == b                      (+0 == -0; NaN never equal; Inf == Inf)
//   finite pair   |a| < Inf and |b| < Inf
//   rel_i         finite pair and |b - a| <= eta_i * max(|a|, |b|)   (the paper's rule)
//   abs_i         finite pair and |b - a| <= tol_i
//   sums          sum (b-a)^2, sum a^2, sum b^2, sum a*b and max |b - a|, over finite pairs
//   non-finite    count of non-finite a, and of non-finite b
// The difference and products are formed in fp64 (exact for every bf16/fp16/fp8 pair and
// for fp32 pairs within 2^29 of each other), so counts are those of exact arithmetic
// except at ties so close that only fp64 rounding of eta * max decides them.
//
// Reduction order is fixed by the shape alone: the logical row-major index space is cut
// into groups of kGroupElems elements; each group is reduced in a fixed order into a
// partial; partials are merged in group order. Thread count and schedule never change
// the bits.
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {

// kMaxTols, kGroupElems and the layout of the two output vectors (int64 counts indexed by
// CountIndex, float64 sums by SumIndex) come from paramgeom/contract.h (via common.h),
// generated from python/paramgeom/_contract.py.

struct DiffStatsParams {
  int n_rel;
  int n_abs;
  int cast_bf16;
  // Which count decides "changed" in the per-row outputs: kRel0 when a relative
  // tolerance is given (the paper's rule), kEqual otherwise.
  int changed_index;
  double rel_tols[kMaxTols];
  double abs_tols[kMaxTols];
};

struct DiffAccum {
  pg_i64 counts[kNumCounts];
  double sums[kNumSums];

  PG_HD void clear() {
    for (int i = 0; i < kNumCounts; ++i) counts[i] = 0;
    for (int i = 0; i < kNumSums; ++i) sums[i] = 0.0;
  }
  PG_HD void merge(const DiffAccum& o) {
    for (int i = 0; i < kNumCounts; ++i) counts[i] += o.counts[i];
    for (int i = 0; i < kMaxAbsDelta; ++i) sums[i] += o.sums[i];
    sums[kMaxAbsDelta] = o.sums[kMaxAbsDelta] > sums[kMaxAbsDelta] ? o.sums[kMaxAbsDelta]
                                                                    : sums[kMaxAbsDelta];
  }
  PG_HD pg_i64 unchanged(const DiffStatsParams& p) const { return counts[p.changed_index]; }
};

// The per-element terms every backend computes. Written with selects, not branches, so
// the CPU loop that calls it vectorises.
struct ElementTerms {
  double d;    // b - a
  double ad;   // |b - a|
  double m;    // max(|a|, |b|)
  double a;
  double b;
  bool equal;
  bool finite0;
  bool finite1;
  bool finite;  // both
};

PG_HD ElementTerms classify(float fa, float fb, bool cast_bf16) {
  if (cast_bf16) {
    fa = round_to_bf16(fa);
    fb = round_to_bf16(fb);
  }
  ElementTerms t;
  t.a = static_cast<double>(fa);
  t.b = static_cast<double>(fb);
  t.d = t.b - t.a;
  t.ad = t.d < 0.0 ? -t.d : t.d;
  const double aa = t.a < 0.0 ? -t.a : t.a;
  const double ab = t.b < 0.0 ? -t.b : t.b;
  t.m = aa > ab ? aa : ab;
  t.equal = t.a == t.b;
  const double inf = static_cast<double>(bits_to_float(0x7f800000u));
  t.finite0 = aa < inf;  // false for NaN too
  t.finite1 = ab < inf;
  t.finite = t.finite0 && t.finite1;
  return t;
}

// Scalar accumulation of one element: the definition the vectorised CPU loop and the
// CUDA threads both follow.
PG_HD void accumulate_terms(DiffAccum& acc, const DiffStatsParams& p, const ElementTerms& t) {
  acc.counts[kCount] += 1;
  acc.counts[kEqual] += t.equal ? 1 : 0;
  acc.counts[kNonFinite0] += t.finite0 ? 0 : 1;
  acc.counts[kNonFinite1] += t.finite1 ? 0 : 1;
  for (int i = 0; i < p.n_rel; ++i)
    acc.counts[kRel0 + i] += (t.finite && t.ad <= p.rel_tols[i] * t.m) ? 1 : 0;
  for (int i = 0; i < p.n_abs; ++i)
    acc.counts[kAbs0 + i] += (t.finite && t.ad <= p.abs_tols[i]) ? 1 : 0;
  if (t.finite) {
    acc.sums[kSumSqDelta] += t.d * t.d;
    acc.sums[kSumSqW0] += t.a * t.a;
    acc.sums[kSumSqW1] += t.b * t.b;
    acc.sums[kSumW0W1] += t.a * t.b;
    if (t.ad > acc.sums[kMaxAbsDelta]) acc.sums[kMaxAbsDelta] = t.ad;
  }
}

// Block-scaled FP8 inputs (DeepSeek-V3 layout, python/paramgeom/checkpoints/fp8.py): when
// scale0 and scale1 are set (both or neither; fp8 dtypes only), element (i, j) of the view
// stands for round_to_bf16(decode(q[i][j]) * scale[(row0 + i) / kScaleBlock][j /
// kScaleBlock]), the product formed in fp32 (one rounding), exactly what dequantising on
// the host and rounding to bf16 gives, read in one pass over the stored bytes. The view
// is the weight matrix itself (rows = its rows) or a row block of it starting at row0.
struct BlockScales {
  const float* scale0;  // fp32 scale grid of w0, or null (unscaled)
  const float* scale1;  // fp32 scale grid of w1, or null
  pg_i64 stride0;       // elements between rows of each grid
  pg_i64 stride1;
  pg_i64 row0;  // weight row of the view's row 0 (row-block streaming)
};

// Whether a grid of grid_rows x grid_cols scales covers a (rows, cols) view whose row 0 is
// weight row row0: every binding checks this before handing BlockScales to a kernel.
PG_HD bool scale_grid_covers(pg_i64 grid_rows, pg_i64 grid_cols, pg_i64 rows, pg_i64 cols,
                             pg_i64 row0) {
  const pg_i64 need_cols = (cols + kScaleBlock - 1) / kScaleBlock;
  const pg_i64 need_rows = rows > 0 ? (row0 + rows - 1) / kScaleBlock + 1 : 0;
  return row0 >= 0 && grid_cols == need_cols && grid_rows >= need_rows;
}

// The row of a scale grid that weight row `row0 + r` uses.
PG_HD const float* scale_row(const float* grid, pg_i64 stride, pg_i64 row0, pg_i64 r) {
  return grid + ((row0 + r) / kScaleBlock) * stride;
}

// A scaled element: the fp32 product of the decoded fp8 value and its block's scale,
// rounded to bf16 (column `col` of a row whose scale row is `srow`).
PG_HD float scaled_element(float q, const float* srow, pg_i64 col) {
  return round_to_bf16(q * srow[col / kScaleBlock]);
}

// A 2-D view of both inputs: `rows` rows of `cols` contiguous elements, rows `stride0` /
// `stride1` elements apart. Any contiguous tensor is (1, numel); a row slice keeps its
// row stride.
struct DiffStatsArgs {
  const void* w0;
  const void* w1;
  int dtype;
  pg_i64 rows;
  pg_i64 cols;
  pg_i64 stride0;
  pg_i64 stride1;
  DiffStatsParams params;
  BlockScales scales;   // all null / zero: unscaled
  pg_i64* counts;       // out: kNumCounts int64
  double* sums;         // out: kNumSums float64
  pg_i64* row_changed;  // out: rows int64, or null
  double* row_sq_delta; // out: rows float64, or null (both or neither)
};

// A group is the run [g * kGroupElems, (g + 1) * kGroupElems) of the logical row-major
// index. Rows cut by a group boundary are reported through at most two partial-row slots
// per group (its first and its last piece), merged in group order afterwards.
PG_HD pg_i64 num_groups(pg_i64 rows, pg_i64 cols) {
  const pg_i64 n = rows * cols;
  return (n + kGroupElems - 1) / kGroupElems;
}

struct PartialRow {
  pg_i64 row;  // -1 when the slot is unused
  pg_i64 changed;
  double sq_delta;
};

}  // namespace paramgeom
