// paramgeom/common.h: portable scalar types, dtype codes and exact decoders shared by
// the C++/OpenMP kernels, the nvcc-compiled CUDA kernels and the same CUDA source
// compiled at run time by NVRTC (cupy). Nothing here may include a header NVRTC lacks.
#pragma once

#if defined(__CUDACC__)
#define PG_HD __host__ __device__ __forceinline__
#else
#define PG_HD inline
#endif

#if defined(__CUDACC_RTC__)
typedef long long pg_i64;
typedef unsigned long long pg_u64;
typedef unsigned int pg_u32;
typedef unsigned short pg_u16;
typedef unsigned char pg_u8;
#else
#include <cstdint>
#include <cstring>
typedef std::int64_t pg_i64;
typedef std::uint64_t pg_u64;
typedef std::uint32_t pg_u32;
typedef std::uint16_t pg_u16;
typedef std::uint8_t pg_u8;
#endif

namespace paramgeom {

// Storage dtypes the kernels read. The numbers are part of the binding ABI: the Python
// layer passes them (python/paramgeom/_dtypes.py mirrors this list).
enum DType : int {
  kFloat32 = 0,
  kBFloat16 = 1,
  kFloat16 = 2,
  kFloat8E4M3 = 3,  // float8_e4m3fn: no infinities, S.1111.111 is NaN
  kFloat8E5M2 = 4,  // float8_e5m2: the top byte of an IEEE half
};

// Error codes returned by every host launcher (0 = success).
enum Status : int {
  kOk = 0,
  kBadDType = 1,
  kBadArgument = 2,
  kOutOfMemory = 3,
  kCudaError = 4,
};

PG_HD float bits_to_float(pg_u32 u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

PG_HD pg_u32 float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  pg_u32 u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// Every decoder below is exact: each bf16/fp16/fp8 value is representable in fp32.
// They are branch-free (selects only) so that the compiler vectorises the CPU loops.

PG_HD float decode_bf16(pg_u16 h) { return bits_to_float(static_cast<pg_u32>(h) << 16); }

// IEEE half -> float. Shifting exponent+mantissa into float position and multiplying by
// 2^(127-15) rebiases normals and turns halves' subnormals into exact float normals.
PG_HD float decode_f16(pg_u16 h) {
  const pg_u32 sign = static_cast<pg_u32>(h & 0x8000u) << 16;
  const pg_u32 em = static_cast<pg_u32>(h & 0x7fffu);
  const float scaled = bits_to_float(em << 13) * 0x1p112f;
  const pg_u32 special = (em << 13) | 0x7f800000u;  // Inf or NaN keeps its payload
  const pg_u32 mag = em >= 0x7c00u ? special : float_to_bits(scaled);
  return bits_to_float(mag | sign);
}

// float8_e4m3fn -> float: bias 7, no infinities; |x| = 0x7f is NaN.
PG_HD float decode_f8e4m3(pg_u8 x) {
  const pg_u32 sign = static_cast<pg_u32>(x & 0x80u) << 24;
  const pg_u32 em = static_cast<pg_u32>(x & 0x7fu);
  const float scaled = bits_to_float(em << 20) * 0x1p120f;
  const pg_u32 mag = em == 0x7fu ? 0x7fc00000u : float_to_bits(scaled);
  return bits_to_float(mag | sign);
}

// float8_e5m2 is the high byte of an IEEE half.
PG_HD float decode_f8e5m2(pg_u8 x) { return decode_f16(static_cast<pg_u16>(x) << 8); }

// fp32 -> bf16 with round-to-nearest-even, NaN -> canonical quiet NaN (torch's rule),
// returned widened back to fp32.
PG_HD float round_to_bf16(float f) {
  const pg_u32 u = float_to_bits(f);
  const bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  const pg_u32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return bits_to_float(is_nan ? 0x7fc00000u : rounded);
}

template <int kDType>
struct Storage;
template <>
struct Storage<kFloat32> {
  typedef float type;
  static PG_HD float decode(float x) { return x; }
};
template <>
struct Storage<kBFloat16> {
  typedef pg_u16 type;
  static PG_HD float decode(pg_u16 x) { return decode_bf16(x); }
};
template <>
struct Storage<kFloat16> {
  typedef pg_u16 type;
  static PG_HD float decode(pg_u16 x) { return decode_f16(x); }
};
template <>
struct Storage<kFloat8E4M3> {
  typedef pg_u8 type;
  static PG_HD float decode(pg_u8 x) { return decode_f8e4m3(x); }
};
template <>
struct Storage<kFloat8E5M2> {
  typedef pg_u8 type;
  static PG_HD float decode(pg_u8 x) { return decode_f8e5m2(x); }
};

// Bit-level classification of a storage value, without decoding. For every IEEE-style
// format here two non-NaN encodings are the same number iff they are identical or both
// zeros, so equality, finiteness and NaN-ness are integer tests on the bits. The CPU
// kernels run them on 8/16/32-bit lanes, 32-64 values per instruction.
template <int kDType>
struct BitTraits;
template <>
struct BitTraits<kFloat32> {
  typedef pg_u32 U;
  static constexpr pg_u32 kMag = 0x7fffffffu, kExp = 0x7f800000u;
  static constexpr int kPrecision = 24;  // significand bits, implicit bit included
};
template <>
struct BitTraits<kBFloat16> {
  typedef pg_u16 U;
  static constexpr pg_u32 kMag = 0x7fffu, kExp = 0x7f80u;
  static constexpr int kPrecision = 8;
};
template <>
struct BitTraits<kFloat16> {
  typedef pg_u16 U;
  static constexpr pg_u32 kMag = 0x7fffu, kExp = 0x7c00u;
  static constexpr int kPrecision = 11;
};
template <>
struct BitTraits<kFloat8E4M3> {  // no Inf: the only non-finite encodings are the NaNs
  typedef pg_u8 U;
  static constexpr pg_u32 kMag = 0x7fu, kExp = 0x7fu;
  static constexpr int kPrecision = 4;
};
template <>
struct BitTraits<kFloat8E5M2> {
  typedef pg_u8 U;
  static constexpr pg_u32 kMag = 0x7fu, kExp = 0x7cu;
  static constexpr int kPrecision = 3;
};

// The exact fp32 value of a storage element given as its bits: the CPU kernels read every
// format as unsigned integers of its width.
template <int kDType>
struct BitsDecoder {
  static PG_HD float decode(typename BitTraits<kDType>::U u) { return Storage<kDType>::decode(u); }
};
template <>
struct BitsDecoder<kFloat32> {
  static PG_HD float decode(pg_u32 u) { return bits_to_float(u); }
};
template <int kDType>
PG_HD float decode_bits(typename BitTraits<kDType>::U u) {
  return BitsDecoder<kDType>::decode(u);
}

// All return 0 or 1 in the lane type C (at least as wide as the storage bits), so that
// vectorised loops can add them up directly and stay in C-wide lanes: the CPU kernel runs
// them on 16-bit lanes for the 16-bit formats, 32 values per AVX-512 instruction.
template <int kDType, class C = pg_u32>
PG_HD C bits_nonfinite(C x) {
  return static_cast<C>(static_cast<C>(x & static_cast<C>(BitTraits<kDType>::kExp)) ==
                        static_cast<C>(BitTraits<kDType>::kExp));
}
template <int kDType, class C = pg_u32>
PG_HD C bits_nan(C x) {
  const C mag = static_cast<C>(x & static_cast<C>(BitTraits<kDType>::kMag));
  if constexpr (kDType == kFloat8E4M3) {
    return static_cast<C>(mag == static_cast<C>(BitTraits<kDType>::kExp));
  } else {
    return static_cast<C>(mag > static_cast<C>(BitTraits<kDType>::kExp));
  }
}
template <int kDType, class C = pg_u32>
PG_HD C bits_equal(C x, C y) {
  const C same = static_cast<C>(static_cast<C>(x == y) & static_cast<C>(bits_nan<kDType, C>(x) ^ 1u));
  const C zeros = static_cast<C>(static_cast<C>((x | y) & static_cast<C>(BitTraits<kDType>::kMag)) ==
                                 static_cast<C>(0));
  return static_cast<C>(same | zeros);
}

// For a format with p significand bits, distinct finite values differ by at least 2^-p of
// the larger, with equality only for a power of two and its predecessor (2 and 2 - 2^-7 in
// bf16). So for eta strictly below this bound the paper's rule
// |b-a| <= eta*max(|a|,|b|) on finite values is plain equality; at eta = 2^-p it is not.
// bf16: 2^-8, so the paper's eta = 1e-3 on bf16 is a bit compare.
PG_HD double rel_tol_equality_bound(int precision_bits) {
  double bound = 1.0;
  for (int i = 0; i < precision_bits; ++i) bound *= 0.5;
  return bound;
}

PG_HD int dtype_size(int dtype) {
  return dtype == kFloat32 ? 4 : (dtype == kBFloat16 || dtype == kFloat16) ? 2 : 1;
}

}  // namespace paramgeom
