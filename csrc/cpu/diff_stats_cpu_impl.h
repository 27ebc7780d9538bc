// The OpenMP diff-statistics kernel, compiled once per instruction set: each
// diff_stats_cpu_<isa>.cpp defines PG_ISA_NS and includes this file with its own -m flags,
// and diff_stats_cpu.cpp picks one at run time. Counts are exact and identical across
// variants; float64 sums are reduced in a vector-width-dependent lane order, so their
// last bits depend on the variant (each variant is deterministic on its own).
#include <omp.h>
#if defined(__AVX512BW__) && defined(__AVX512DQ__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <limits>
#include <new>
#include <type_traits>
#include <vector>

#include "dtype_dispatch.h"
#include "paramgeom/diff_stats.h"

#ifndef PG_ISA_NS
#error "define PG_ISA_NS before including diff_stats_cpu_impl.h"
#endif

namespace paramgeom {
namespace PG_ISA_NS {

constexpr int kBlock = 2048;  // elements per block: both inputs' block stays in L1

// Pass 1: counts from the bits alone (equal, non-finite, finite-and-equal). Integer lanes
// as narrow as the format allows (16 bits for bf16/fp16/fp8: a block's counts fit), so it
// runs at memory speed and leaves the cores to the float64 pass.
template <int kDType>
inline void count_bits(const typename BitTraits<kDType>::U* __restrict x,
                       const typename BitTraits<kDType>::U* __restrict y, int n, pg_u32& eq,
                       pg_u32& nf0, pg_u32& nf1, pg_u32& feq) {
  using U = typename BitTraits<kDType>::U;
  using C = typename std::conditional<sizeof(U) >= 2, U, pg_u16>::type;
  static_assert(kBlock <= 0xffff, "block counts must fit 16-bit lanes");
  C c_eq = 0, c_nf0 = 0, c_nf1 = 0, c_feq = 0;
  for (int i = 0; i < n; ++i) {
    const C a = x[i], b = y[i];
    const C na = bits_nonfinite<kDType, C>(a), nb = bits_nonfinite<kDType, C>(b);
    const C e = bits_equal<kDType, C>(a, b);
    c_eq = static_cast<C>(c_eq + e);
    c_nf0 = static_cast<C>(c_nf0 + na);
    c_nf1 = static_cast<C>(c_nf1 + nb);
    c_feq = static_cast<C>(c_feq + (e & (na ^ 1u)));
  }
  eq = c_eq;
  nf0 = c_nf0;
  nf1 = c_nf1;
  feq = c_feq;
}

// Pass 2: the float64 sums and max |d| over finite pairs (classify()'s rule). kMasked is
// only needed when the block holds a non-finite value; kStage keeps |d| (NaN for
// non-finite pairs) and max(|a|, |b|) for the tolerance counts that are not bit tests.
template <int kDType, bool kMasked, bool kStage>
inline void sum_block(const typename BitTraits<kDType>::U* __restrict x,
                      const typename BitTraits<kDType>::U* __restrict y, int n, double* sums,
                      double* __restrict ad_buf, double* __restrict m_buf) {
  double d2 = 0.0, a2 = 0.0, b2 = 0.0, ab = 0.0, mx = 0.0;
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
#pragma omp simd reduction(+ : d2, a2, b2, ab) reduction(max : mx)
  for (int i = 0; i < n; ++i) {
    const double a = decode_bits<kDType>(x[i]);
    const double b = decode_bits<kDType>(y[i]);
    const double d = b - a;
    const double ad = __builtin_fabs(d);
    if constexpr (kMasked) {
      const double aa = __builtin_fabs(a), abb = __builtin_fabs(b);
      const bool fin = (aa < inf) & (abb < inf);
      d2 += fin ? d * d : 0.0;
      a2 += fin ? a * a : 0.0;
      b2 += fin ? b * b : 0.0;
      ab += fin ? a * b : 0.0;
      mx = (fin & (ad > mx)) ? ad : mx;
      if constexpr (kStage) {
        ad_buf[i] = fin ? ad : nan;
        m_buf[i] = aa > abb ? aa : abb;
      }
    } else {
      d2 += d * d;
      a2 += a * a;
      b2 += b * b;
      ab += a * b;
      mx = ad > mx ? ad : mx;
      if constexpr (kStage) {
        const double aa = __builtin_fabs(a), abb = __builtin_fabs(b);
        ad_buf[i] = ad;
        m_buf[i] = aa > abb ? aa : abb;
      }
    }
  }
  sums[kSumSqDelta] += d2;
  sums[kSumSqW0] += a2;
  sums[kSumSqW1] += b2;
  sums[kSumW0W1] += ab;
  sums[kMaxAbsDelta] = mx > sums[kMaxAbsDelta] ? mx : sums[kMaxAbsDelta];
}

// Which tolerance counts are bit tests: a relative tolerance at or below the format's
// equality bound (common.h) counts exactly the finite equal pairs.
struct TolPlan {
  bool rel_is_equality[kMaxTols];
  bool stage;  // some count needs the staged |d| and max
};

template <int kDType>
inline TolPlan plan_tols(const DiffStatsParams& p) {
  TolPlan plan{};
  const double bound = rel_tol_equality_bound(BitTraits<kDType>::kPrecision);
  plan.stage = p.n_abs > 0;
  for (int r = 0; r < p.n_rel; ++r) {
    plan.rel_is_equality[r] = p.rel_tols[r] < bound;
    plan.stage |= !plan.rel_is_equality[r];
  }
  return plan;
}

#if defined(__AVX512BW__) && defined(__AVX512DQ__)
// The hot path on AVX-512 for bf16 (the paper's dtype) and fp32: one loop that runs the
// bit tests on integer lanes (mask compares and popcounts) and the float64 work on the
// same registers: decode, b - a, the four sums, max |d|, and every tolerance that is not
// a bit test (|d| <= eta * max(|a|, |b|) with vrangepd's max-magnitude, |d| <= tol), so
// nothing is staged through memory. Same rule as count_bits + sum_block + finish_block;
// lanes are visited in unpack order, which fixes (and so keeps deterministic) the
// summation order. When the block holds a non-finite value it reports so, having
// changed nothing, and the caller runs the generic passes (their masked rule).
struct FusedCounts {
  pg_u32 eq;
  pg_u32 rel[kMaxTols];
  pg_u32 abs[kMaxTols];
};

struct FusedAcc {
  __m512d d2[2], a2[2], b2[2], ab[2], mx[2];
  __m512d eta[kMaxTols], tol[kMaxTols];
  int n_rel, n_abs;
  __m512i c_rel[kMaxTols], c_abs[kMaxTols];  // per-lane counts (a masked add each)
};

// The float64 work on one 8-lane pair of (a, b) into accumulator set h; `live` marks the
// real lanes (padding lanes are zeros: they add nothing to the sums or |d|, but would
// pass the tolerance tests). kNR / kNA: the number of staged relative / absolute
// tolerances when known at compile time (the common 0 and 1, so their counters stay in
// registers), -1 for f.n_rel / f.n_abs.
template <int kNR, int kNA>
inline void fused_lanes(FusedAcc& f, __m512d a, __m512d b, int h, __mmask8 live) {
  const __m512d d = _mm512_sub_pd(b, a);
  f.d2[h] = _mm512_fmadd_pd(d, d, f.d2[h]);
  f.a2[h] = _mm512_fmadd_pd(a, a, f.a2[h]);
  f.b2[h] = _mm512_fmadd_pd(b, b, f.b2[h]);
  f.ab[h] = _mm512_fmadd_pd(a, b, f.ab[h]);
  const __m512d ad = _mm512_andnot_pd(_mm512_set1_pd(-0.0), d);
  f.mx[h] = _mm512_max_pd(f.mx[h], ad);
  const int n_rel = kNR >= 0 ? kNR : f.n_rel;
  const int n_abs = kNA >= 0 ? kNA : f.n_abs;
  const __m512i one = _mm512_set1_epi64(1);
  if (n_rel) {
    const __m512d m = _mm512_range_pd(a, b, 0x0B);  // max(|a|, |b|), sign cleared
    for (int r = 0; r < n_rel; ++r) {
      const __mmask8 in =
          _mm512_mask_cmp_pd_mask(live, ad, _mm512_mul_pd(f.eta[r], m), _CMP_LE_OQ);
      f.c_rel[r] = _mm512_mask_add_epi64(f.c_rel[r], in, f.c_rel[r], one);
    }
  }
  for (int r = 0; r < n_abs; ++r) {
    const __mmask8 in = _mm512_mask_cmp_pd_mask(live, ad, f.tol[r], _CMP_LE_OQ);
    f.c_abs[r] = _mm512_mask_add_epi64(f.c_abs[r], in, f.c_abs[r], one);
  }
}

// Returns the equal count, or -1 when the block holds a non-finite value.
template <int kDType, int kNR, int kNA>
inline pg_i64 fused_loop(const typename BitTraits<kDType>::U* x,
                         const typename BitTraits<kDType>::U* y, int n, FusedAcc& f) {
  constexpr bool kBf16 = kDType == kBFloat16;
  constexpr bool kTols = kNR != 0 || kNA != 0;
  constexpr int kStep = kBf16 ? 32 : 16;  // elements per iteration (one zmm of bits)
  pg_u32 c_eq = 0;
  pg_u32 any_nf = 0;
  for (int i = 0; i < n; i += kStep) {
    // Masked loads run at half the speed of plain ones (measured on Zen 5), so only the
    // block's last, partial vector is loaded under a mask.
    const bool full = n - i >= kStep;
    if constexpr (kBf16) {
      const __mmask32 live = full ? ~__mmask32(0) : (__mmask32(1) << (n - i)) - 1;
      const __m512i va = full ? _mm512_loadu_si512(x + i) : _mm512_maskz_loadu_epi16(live, x + i);
      const __m512i vb = full ? _mm512_loadu_si512(y + i) : _mm512_maskz_loadu_epi16(live, y + i);
      const __m512i kExp = _mm512_set1_epi16(0x7f80), kMag = _mm512_set1_epi16(0x7fff);
      any_nf |= _mm512_cmpeq_epi16_mask(_mm512_and_si512(va, kExp), kExp) |
                _mm512_cmpeq_epi16_mask(_mm512_and_si512(vb, kExp), kExp);
      const __mmask32 same = _mm512_cmpeq_epi16_mask(va, vb);
      const __mmask32 zeros = _mm512_testn_epi16_mask(_mm512_or_si512(va, vb), kMag);
      c_eq += static_cast<pg_u32>(__builtin_popcount((same | zeros) & live));
      // bf16 bits into the high half of 32-bit lanes = the fp32 value; padding lanes are 0.
      const __m512i zero = _mm512_setzero_si512();
      const __m512i wa[2] = {_mm512_unpacklo_epi16(zero, va), _mm512_unpackhi_epi16(zero, va)};
      const __m512i wb[2] = {_mm512_unpacklo_epi16(zero, vb), _mm512_unpackhi_epi16(zero, vb)};
      for (int h = 0; h < 2; ++h) {
        // unpacklo/hi take words 0-3 / 4-7 of each 128-bit lane: the live lanes of this
        // half, in its order (only the tolerance counts need them).
        pg_u32 lm = 0xffffu;
        if (kTols && !full) {
          lm = 0;
          for (int lane = 0; lane < 4; ++lane)
            lm |= ((static_cast<pg_u32>(live) >> (8 * lane + 4 * h)) & 0xfu) << (4 * lane);
        }
        const __m512 fa = _mm512_castsi512_ps(wa[h]);
        const __m512 fb = _mm512_castsi512_ps(wb[h]);
        fused_lanes<kNR, kNA>(f, _mm512_cvtps_pd(_mm512_castps512_ps256(fa)),
                              _mm512_cvtps_pd(_mm512_castps512_ps256(fb)), h,
                              static_cast<__mmask8>(lm));
        fused_lanes<kNR, kNA>(f, _mm512_cvtps_pd(_mm512_extractf32x8_ps(fa, 1)),
                              _mm512_cvtps_pd(_mm512_extractf32x8_ps(fb, 1)), h,
                              static_cast<__mmask8>(lm >> 8));
      }
    } else {
      const __mmask16 live = full ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
      const __m512i va = full ? _mm512_loadu_si512(x + i) : _mm512_maskz_loadu_epi32(live, x + i);
      const __m512i vb = full ? _mm512_loadu_si512(y + i) : _mm512_maskz_loadu_epi32(live, y + i);
      const __m512i kExp = _mm512_set1_epi32(0x7f800000), kMag = _mm512_set1_epi32(0x7fffffff);
      any_nf |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(va, kExp), kExp) |
                _mm512_cmpeq_epi32_mask(_mm512_and_si512(vb, kExp), kExp);
      const __mmask16 same = _mm512_cmpeq_epi32_mask(va, vb);
      const __mmask16 zeros = _mm512_testn_epi32_mask(_mm512_or_si512(va, vb), kMag);
      c_eq += static_cast<pg_u32>(__builtin_popcount((same | zeros) & live));
      const __m512 fa = _mm512_castsi512_ps(va);
      const __m512 fb = _mm512_castsi512_ps(vb);
      fused_lanes<kNR, kNA>(f, _mm512_cvtps_pd(_mm512_castps512_ps256(fa)),
                            _mm512_cvtps_pd(_mm512_castps512_ps256(fb)), 0,
                            static_cast<__mmask8>(live));
      fused_lanes<kNR, kNA>(f, _mm512_cvtps_pd(_mm512_extractf32x8_ps(fa, 1)),
                            _mm512_cvtps_pd(_mm512_extractf32x8_ps(fb, 1)), 1,
                            static_cast<__mmask8>(live >> 8));
    }
  }
  return any_nf ? -1 : static_cast<pg_i64>(c_eq);
}

template <int kDType>
inline bool fused_block(const typename BitTraits<kDType>::U* x,
                        const typename BitTraits<kDType>::U* y, int n, const DiffStatsParams& p,
                        const TolPlan& plan, FusedCounts& fc, double* sums) {
  static_assert(kDType == kBFloat16 || kDType == kFloat32, "bf16 and fp32 only");
  FusedAcc f;
  int rel_slot[kMaxTols];
  f.n_rel = 0;
  f.n_abs = p.n_abs;
  for (int r = 0; r < p.n_rel; ++r) {
    if (plan.rel_is_equality[r]) continue;
    f.eta[f.n_rel] = _mm512_set1_pd(p.rel_tols[r]);
    f.c_rel[f.n_rel] = _mm512_setzero_si512();
    rel_slot[f.n_rel++] = r;
  }
  for (int r = 0; r < f.n_abs; ++r) {
    f.tol[r] = _mm512_set1_pd(p.abs_tols[r]);
    f.c_abs[r] = _mm512_setzero_si512();
  }
  for (int h = 0; h < 2; ++h)
    f.d2[h] = f.a2[h] = f.b2[h] = f.ab[h] = f.mx[h] = _mm512_setzero_pd();
  pg_i64 eq;
  if (f.n_rel == 0 && f.n_abs == 0) eq = fused_loop<kDType, 0, 0>(x, y, n, f);
  else if (f.n_rel == 0 && f.n_abs == 1) eq = fused_loop<kDType, 0, 1>(x, y, n, f);
  else if (f.n_rel == 1 && f.n_abs == 0) eq = fused_loop<kDType, 1, 0>(x, y, n, f);
  else if (f.n_rel == 1 && f.n_abs == 1) eq = fused_loop<kDType, 1, 1>(x, y, n, f);
  else eq = fused_loop<kDType, -1, -1>(x, y, n, f);
  if (eq < 0) return false;
  fc.eq = static_cast<pg_u32>(eq);  // every pair is finite here: finite-equal = equal
  for (int r = 0; r < f.n_rel; ++r)
    fc.rel[rel_slot[r]] = static_cast<pg_u32>(_mm512_reduce_add_epi64(f.c_rel[r]));
  for (int r = 0; r < f.n_abs; ++r)
    fc.abs[r] = static_cast<pg_u32>(_mm512_reduce_add_epi64(f.c_abs[r]));
  sums[kSumSqDelta] += _mm512_reduce_add_pd(_mm512_add_pd(f.d2[0], f.d2[1]));
  sums[kSumSqW0] += _mm512_reduce_add_pd(_mm512_add_pd(f.a2[0], f.a2[1]));
  sums[kSumSqW1] += _mm512_reduce_add_pd(_mm512_add_pd(f.b2[0], f.b2[1]));
  sums[kSumW0W1] += _mm512_reduce_add_pd(_mm512_add_pd(f.ab[0], f.ab[1]));
  const double m = _mm512_reduce_max_pd(_mm512_max_pd(f.mx[0], f.mx[1]));
  sums[kMaxAbsDelta] = m > sums[kMaxAbsDelta] ? m : sums[kMaxAbsDelta];
  return true;
}
#endif

// Tolerance counts (bit tests, or passes over the staged |d| and max) and the plain counts.
inline void finish_block(const DiffStatsParams& p, const TolPlan& plan, int n, pg_u32 eq,
                         pg_u32 nf0, pg_u32 nf1, pg_u32 feq, const double* ad_buf,
                         const double* m_buf, DiffAccum& acc) {
  for (int r = 0; r < p.n_rel; ++r) {
    if (plan.rel_is_equality[r]) {
      acc.counts[kRel0 + r] += feq;
      continue;
    }
    const double eta = p.rel_tols[r];
    pg_u32 c = 0;
    for (int j = 0; j < n; ++j) c += ad_buf[j] <= eta * m_buf[j];
    acc.counts[kRel0 + r] += c;
  }
  for (int r = 0; r < p.n_abs; ++r) {
    const double tol = p.abs_tols[r];
    pg_u32 c = 0;
    for (int j = 0; j < n; ++j) c += ad_buf[j] <= tol;
    acc.counts[kAbs0 + r] += c;
  }
  acc.counts[kCount] += n;
  acc.counts[kEqual] += eq;
  acc.counts[kNonFinite0] += nf0;
  acc.counts[kNonFinite1] += nf1;
}

// One block of n <= kBlock elements, given as bits of format kDType.
template <int kDType>
inline void block_terms(const typename BitTraits<kDType>::U* x,
                        const typename BitTraits<kDType>::U* y, int n, const DiffStatsParams& p,
                        const TolPlan& plan, DiffAccum& acc) {
  alignas(64) double ad_buf[kBlock];
  alignas(64) double m_buf[kBlock];
  pg_u32 eq, nf0, nf1, feq;
#if defined(__AVX512BW__) && defined(__AVX512DQ__)
  if constexpr (kDType == kBFloat16 || kDType == kFloat32) {
    FusedCounts fc;
    if (fused_block<kDType>(x, y, n, p, plan, fc, acc.sums)) {
      for (int r = 0; r < p.n_rel; ++r)
        acc.counts[kRel0 + r] += plan.rel_is_equality[r] ? fc.eq : fc.rel[r];
      for (int r = 0; r < p.n_abs; ++r) acc.counts[kAbs0 + r] += fc.abs[r];
      acc.counts[kCount] += n;
      acc.counts[kEqual] += fc.eq;
      return;
    }
  }
#endif
  count_bits<kDType>(x, y, n, eq, nf0, nf1, feq);
  const bool masked = (nf0 | nf1) != 0;
  if (masked) {
    if (plan.stage) sum_block<kDType, true, true>(x, y, n, acc.sums, ad_buf, m_buf);
    else sum_block<kDType, true, false>(x, y, n, acc.sums, ad_buf, m_buf);
  } else {
    if (plan.stage) sum_block<kDType, false, true>(x, y, n, acc.sums, ad_buf, m_buf);
    else sum_block<kDType, false, false>(x, y, n, acc.sums, ad_buf, m_buf);
  }
  finish_block(p, plan, n, eq, nf0, nf1, feq, ad_buf, m_buf, acc);
}

// Accumulates n contiguous storage elements into acc, block by block. With kCast the
// block is first rounded to bf16 bits, then handled as bf16.
template <int kDType, bool kCast>
void accumulate_span(const typename BitTraits<kDType>::U* a, const typename BitTraits<kDType>::U* b,
                     pg_i64 n, const DiffStatsParams& p, DiffAccum& acc) {
  constexpr int kBits = kCast ? int(kBFloat16) : kDType;
  const TolPlan plan = plan_tols<kBits>(p);
  for (pg_i64 base = 0; base < n; base += kBlock) {
    const int len = static_cast<int>(std::min<pg_i64>(kBlock, n - base));
    if constexpr (kCast) {
      alignas(64) pg_u16 ra[kBlock];
      alignas(64) pg_u16 rb[kBlock];
      for (int i = 0; i < len; ++i) {
        ra[i] = static_cast<pg_u16>(float_to_bits(round_to_bf16(decode_bits<kDType>(a[base + i]))) >> 16);
        rb[i] = static_cast<pg_u16>(float_to_bits(round_to_bf16(decode_bits<kDType>(b[base + i]))) >> 16);
      }
      block_terms<kBFloat16>(ra, rb, len, p, plan, acc);
    } else {
      block_terms<kDType>(a + base, b + base, len, p, plan, acc);
    }
  }
}

// Block-scaled fp8 (BlockScales): n contiguous elements starting at column col0 of a row
// whose scale rows are sa / sb. Each block of kBlock elements is dequantised to bf16 bits
// (scaled_element: the fp32 product, rounded) in cache, then handled as bf16: one pass
// over the stored bytes, the same values as dequantising on the host.
template <int kDType>
void accumulate_span_scaled(const typename BitTraits<kDType>::U* a,
                            const typename BitTraits<kDType>::U* b, pg_i64 n, pg_i64 col0,
                            const float* sa, const float* sb, const DiffStatsParams& p,
                            DiffAccum& acc) {
  const TolPlan plan = plan_tols<kBFloat16>(p);
  for (pg_i64 base = 0; base < n; base += kBlock) {
    const int len = static_cast<int>(std::min<pg_i64>(kBlock, n - base));
    alignas(64) pg_u16 ra[kBlock];
    alignas(64) pg_u16 rb[kBlock];
    // Runs of one scale block at a time: the scale is a loop constant there, so the
    // decode-multiply-round loop vectorises (same values as scaled_element per element).
    for (int i = 0; i < len;) {
      const pg_i64 col = col0 + base + i;
      const int run = static_cast<int>(
          std::min<pg_i64>(len - i, kScaleBlock - col % kScaleBlock));
      const float fa = sa[col / kScaleBlock], fb = sb[col / kScaleBlock];
      for (int j = i; j < i + run; ++j) {
        ra[j] = static_cast<pg_u16>(
            float_to_bits(round_to_bf16(decode_bits<kDType>(a[base + j]) * fa)) >> 16);
        rb[j] = static_cast<pg_u16>(
            float_to_bits(round_to_bf16(decode_bits<kDType>(b[base + j]) * fb)) >> 16);
      }
      i += run;
    }
    block_terms<kBFloat16>(ra, rb, len, p, plan, acc);
  }
}

// The per-element rule exactly as the CUDA threads run it (classify + accumulate_terms),
// so that CPU tests cover the GPU's arithmetic. Slow; selected with isa="scalar". With
// scale rows (sa, sb non-null) the elements are scaled_element()s, classified as bf16.
template <int kDType, bool kCast>
void accumulate_span_scalar(const typename BitTraits<kDType>::U* a,
                            const typename BitTraits<kDType>::U* b, pg_i64 n, pg_i64 col0,
                            const float* sa, const float* sb, const DiffStatsParams& p,
                            DiffAccum& acc) {
  for (pg_i64 i = 0; i < n; ++i) {
    float fa = decode_bits<kDType>(a[i]), fb = decode_bits<kDType>(b[i]);
    if (sa != nullptr) {
      fa = scaled_element(fa, sa, col0 + i);
      fb = scaled_element(fb, sb, col0 + i);
    }
    accumulate_terms(acc, p, classify(fa, fb, kCast));
  }
}

template <int kDType, bool kCast, bool kScalar, bool kScaled>
int run(const DiffStatsArgs& args, int num_threads) {
  using T = typename BitTraits<kDType>::U;
  const T* a = static_cast<const T*>(args.w0);
  const T* b = static_cast<const T*>(args.w1);
  const pg_i64 rows = args.rows, cols = args.cols;
  const pg_i64 groups = num_groups(rows, cols);
  const pg_i64 n = rows * cols;
  const bool per_row = args.row_changed != nullptr;
  const DiffStatsParams& p = args.params;

  std::vector<DiffAccum> partials;
  std::vector<PartialRow> slots;
  try {
    partials.resize(static_cast<size_t>(groups));
    if (per_row) slots.resize(static_cast<size_t>(2 * groups));
  } catch (const std::bad_alloc&) {
    return kOutOfMemory;
  }
  if (per_row) {
    std::fill(args.row_changed, args.row_changed + rows, pg_i64(0));
    std::fill(args.row_sq_delta, args.row_sq_delta + rows, 0.0);
  }
  if (num_threads <= 0) num_threads = omp_get_max_threads();

#pragma omp parallel for schedule(static) num_threads(num_threads) if (groups > 1)
  for (pg_i64 g = 0; g < groups; ++g) {
    DiffAccum gacc;
    gacc.clear();
    const pg_i64 start = g * kGroupElems;
    const pg_i64 end = std::min(n, start + kGroupElems);
    if (per_row) slots[2 * g].row = slots[2 * g + 1].row = -1;
    pg_i64 r = start / cols, c = start % cols;
    for (pg_i64 pos = start; pos < end; ++r, c = 0) {
      const pg_i64 len = std::min(cols - c, end - pos);
      DiffAccum pacc;
      pacc.clear();
      const T* pa = a + r * args.stride0 + c;
      const T* pb = b + r * args.stride1 + c;
      const BlockScales& s = args.scales;
      const float* sa = kScaled ? scale_row(s.scale0, s.stride0, s.row0, r) : nullptr;
      const float* sb = kScaled ? scale_row(s.scale1, s.stride1, s.row0, r) : nullptr;
      if constexpr (kScalar) {
        accumulate_span_scalar<kDType, kCast>(pa, pb, len, c, sa, sb, p, pacc);
      } else if constexpr (kScaled) {
        accumulate_span_scaled<kDType>(pa, pb, len, c, sa, sb, p, pacc);
      } else {
        accumulate_span<kDType, kCast>(pa, pb, len, p, pacc);
      }
      if (per_row) {
        const pg_i64 changed = len - pacc.unchanged(p);
        const double sq = pacc.sums[kSumSqDelta];
        if (c == 0 && len == cols) {
          args.row_changed[r] = changed;
          args.row_sq_delta[r] = sq;
        } else {
          PartialRow& s = slots[pos == start ? 2 * g : 2 * g + 1];
          s.row = r;
          s.changed = changed;
          s.sq_delta = sq;
        }
      }
      gacc.merge(pacc);
      pos += len;
    }
    partials[g] = gacc;
  }

  DiffAccum total;
  total.clear();
  for (const DiffAccum& part : partials) total.merge(part);
  for (const PartialRow& s : slots) {  // group order: a split row's partial sums keep one order
    if (s.row < 0) continue;
    args.row_changed[s.row] += s.changed;
    args.row_sq_delta[s.row] += s.sq_delta;
  }
  std::copy(total.counts, total.counts + kNumCounts, args.counts);
  std::copy(total.sums, total.sums + kNumSums, args.sums);
  return kOk;
}

template <int kDType, bool kScalar>
int run_dtype(const DiffStatsArgs& args, int num_threads) {
  const bool scaled = args.scales.scale0 != nullptr;
  if (scaled != (args.scales.scale1 != nullptr)) return kBadArgument;
  if constexpr (kDType == kFloat8E4M3 || kDType == kFloat8E5M2) {
    if (scaled) return run<kDType, false, kScalar, true>(args, num_threads);
  } else {
    if (scaled) return kBadArgument;  // block scales belong to fp8 weights
  }
  return args.params.cast_bf16 ? run<kDType, true, kScalar, false>(args, num_threads)
                               : run<kDType, false, kScalar, false>(args, num_threads);
}

template <bool kScalar>
int diff_stats(const DiffStatsArgs& args, int num_threads) {
  return with_storage_dtype(args.dtype, [&](auto d) {
    return run_dtype<decltype(d)::value, kScalar>(args, num_threads);
  });
}

}  // namespace PG_ISA_NS
}  // namespace paramgeom
