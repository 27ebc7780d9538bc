// The register-blocked AVX-512 micro-kernel shared by the CPU products (diff_matmul in
// fp32, gram_update in fp64). Include only from files built with the avx512 flags.
//
//   C[r, :] += sum_q A(r, q) X[q, :],   A(r, q) = A[r * sp + q * sq]
//
// sp = ld, sq = 1 walks a row-major tile's rows; sp = 1, sq = ld walks its columns (the
// transposed product). MR output rows x NV vectors of accumulators stay in registers
// (24 of the 32 zmm whatever NV is) over all K steps; each step loads NV vectors of X and
// broadcasts one A value per row. Rows of X and C are padded to whole vectors by the
// caller, so no step needs a mask.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "paramgeom/common.h"

namespace paramgeom {
namespace panel {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using R = __m512;
  static constexpr int kLanes = 16;
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R set1(float a) { return _mm512_set1_ps(a); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
};
template <>
struct Vec<double> {
  using R = __m512d;
  static constexpr int kLanes = 8;
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, R v) { _mm512_storeu_pd(p, v); }
  static R set1(double a) { return _mm512_set1_pd(a); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
};

constexpr int kPanelPad = 24;  // every MR below (24 / NV) divides it

template <typename T, int MR, int NV>
inline void micro(const T* A, pg_i64 sp, pg_i64 sq, pg_i64 K, const T* X, pg_i64 ldx, T* C,
                  pg_i64 ldc) {
  using V = Vec<T>;
  typename V::R acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V::load(C + r * ldc + v * V::kLanes);
  for (pg_i64 q = 0; q < K; ++q) {
    typename V::R xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = V::load(X + q * ldx + v * V::kLanes);
    const T* a = A + q * sq;
    for (int r = 0; r < MR; ++r) {
      const typename V::R ar = V::set1(a[r * sp]);
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fma(ar, xv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) V::store(C + r * ldc + v * V::kLanes, acc[r][v]);
}

template <typename T, int NV>
inline void panels_nv(const T* A, pg_i64 sp, pg_i64 sq, pg_i64 P, pg_i64 K, const T* X,
                      pg_i64 ldx, T* C, pg_i64 ldc) {
  constexpr int MR = 24 / NV;
  for (pg_i64 p = 0; p < P; p += MR)
    micro<T, MR, NV>(A + p * sp, sp, sq, K, X, ldx, C + p * ldc, ldc);
}

// P output rows (a multiple of kPanelPad) x `width` columns (a multiple of the vector
// width), in chunks of four vectors.
template <typename T>
inline void panels(const T* A, pg_i64 sp, pg_i64 sq, pg_i64 P, pg_i64 K, const T* X,
                   pg_i64 ldx, T* C, pg_i64 ldc, pg_i64 width) {
  constexpr pg_i64 kChunk = 4 * Vec<T>::kLanes;
  for (pg_i64 c0 = 0; c0 < width; c0 += kChunk) {
    const int nv = static_cast<int>(std::min<pg_i64>(kChunk, width - c0) / Vec<T>::kLanes);
    switch (nv) {
      case 1: panels_nv<T, 1>(A, sp, sq, P, K, X + c0, ldx, C + c0, ldc); break;
      case 2: panels_nv<T, 2>(A, sp, sq, P, K, X + c0, ldx, C + c0, ldc); break;
      case 3: panels_nv<T, 3>(A, sp, sq, P, K, X + c0, ldx, C + c0, ldc); break;
      default: panels_nv<T, 4>(A, sp, sq, P, K, X + c0, ldx, C + c0, ldc); break;
    }
  }
}

inline pg_i64 round_up(pg_i64 v, pg_i64 to) { return (v + to - 1) / to * to; }

}  // namespace panel
}  // namespace paramgeom
