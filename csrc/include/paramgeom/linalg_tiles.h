// paramgeom/linalg_tiles.h: the tiled fp32 SIMT GEMM behind the CUDA kernels of
// diff_matmul and gram_update (DESIGN.md, kernels 2 and 3), shared by their kernel sources
// (csrc/cuda/diff_matmul_kernels.cuh, csrc/cuda/gram_update_kernels.cuh), which nvcc builds
// into paramgeom._C_cuda and NVRTC builds at run time (cupy backend). NVRTC-safe: it
// includes nothing but common.h.
//
// Both ops are one product C (P x Q) = A (P x R) @ B (R x Q) in which each operand is the
// fp32 difference of two stored matrices, formed in registers before any rounding:
//   A = A1 - A0   read as A(p, r) = A*[p][r] ("NN") or A*[r][p] ("TN"), A0 optional
//   B = B1 - B0   read as B(r, q) = B*[r][q], B0 optional
//   diff_matmul          A = w1 - w0 (NN),     B = x               P, Q, R = m, k, n
//   diff_matmul, T       A = (w1 - w0)^T (TN), B = x               P, Q, R = n, k, m
//   gram_update          A = (x - x0)^T (TN),  B = x - x0          P, Q, R = n, n, r
// Inputs are decoded exactly to fp32 (common.h), subtracted in fp32 (one rounding, relative
// 2^-24 of the difference), multiplied and accumulated with explicit fp32 FMAs (no tensor
// cores, no tf32), so the result does not depend on --fmad.
//
// Tiling. A block of kThreads = 256 threads owns a kTileP x kTileQ (128 x 64) tile of C and
// one split of the reduction; it walks its split kTileR (32) at a time: global loads of the
// next step go to registers while the current step is computed from shared memory
// (sA: 32 x 128 fp32, sB: 32 x 64 fp32; 24 KiB). Thread (ty, tx) = (tid / 16, tid % 16)
// computes rows {4ty..4ty+3, 64+4ty..64+4ty+3} x columns {4tx..4tx+3}: per reduction step
// three 16-byte shared loads feed 32 FMAs. Global reads are 16-byte vectors when a matrix's
// base and row stride allow it, element loads otherwise (same values, same bits).
// In NN the A tile is transposed on its way to shared memory; its columns are XOR-swizzled in
// groups of four so that those stores hit 32 distinct banks.
//
// Split-K. The reduction is cut into `splits` runs of `tiles_per_split` steps, chosen from
// the shape alone (split_plan) so that small outputs still fill the GPU. With one split a
// block writes its result; with several, each writes an fp32 partial to a workspace and a
// second kernel adds the partials in split order in fp64 (DESIGN: fp32 within a block, fp64
// across blocks). Every output element is therefore reduced in a fixed order fixed by the
// shape: results are bitwise deterministic, no atomics anywhere, and gram_update's G is
// exactly symmetric (fma(a, b, c) == fma(b, a, c)).
#pragma once

#include "paramgeom/common.h"

namespace paramgeom {
namespace linalg {

constexpr int kThreads = 256;
constexpr int kTileP = 128;
constexpr int kTileQ = 64;
constexpr int kTileR = 32;
// Split-K aims at about this many blocks (two per SM of an H100 at 2 blocks/SM is 264),
// with at least kMinSplitSteps reduction steps per split. Shape-only: the bits never depend
// on the device.
constexpr pg_i64 kTargetBlocks = 256;
constexpr pg_i64 kMinSplitSteps = 8;
constexpr pg_i64 kMaxGridYZ = 65535;

// What a block (or the split-K final kernel) does with a finished value: the Epilogue modes
// of paramgeom/contract.h (kStore, kPartial, kAccumulate32, kAccumulate64).

struct SplitPlan {
  pg_i64 tiles_p;          // grid.x
  pg_i64 tiles_q;          // grid.y
  pg_i64 splits;           // grid.z
  pg_i64 tiles_per_split;  // reduction steps (of kTileR) per split; 0 when R == 0
};

PG_HD pg_i64 ceil_div(pg_i64 a, pg_i64 b) { return (a + b - 1) / b; }

// The split of C (P x Q) += A (P x R) B (R x Q); paramgeom/launch_plan.h builds the launches
// of both ops (and the cupy backend's, through paramgeom._C) on it.
PG_HD SplitPlan split_plan(pg_i64 P, pg_i64 Q, pg_i64 R) {
  SplitPlan plan;
  plan.tiles_p = ceil_div(P, kTileP);
  plan.tiles_q = ceil_div(Q, kTileQ);
  const pg_i64 steps = ceil_div(R, kTileR);
  const pg_i64 tiles = plan.tiles_p * plan.tiles_q;
  pg_i64 want = tiles > 0 ? ceil_div(kTargetBlocks, tiles) : 1;
  const pg_i64 most = steps / kMinSplitSteps;
  if (want > most) want = most;
  if (want > kMaxGridYZ) want = kMaxGridYZ;
  if (want < 1) want = 1;
  plan.tiles_per_split = ceil_div(steps, want);
  plan.splits = plan.tiles_per_split > 0 ? ceil_div(steps, plan.tiles_per_split) : 1;
  return plan;
}

// Bytes of fp32 split-K workspace: splits * P * Q floats when splits > 1, else 0.
PG_HD pg_i64 split_workspace_bytes(pg_i64 P, pg_i64 Q, pg_i64 R) {
  const SplitPlan plan = split_plan(P, Q, R);
  return plan.splits > 1 ? plan.splits * P * Q * pg_i64(sizeof(float)) : 0;
}

}  // namespace linalg
}  // namespace paramgeom

// ---- device code (nvcc, NVRTC, and the CPU emulator of the tests) ------------------------
#if defined(__CUDACC__) || defined(PG_CUDA_EMULATION)

namespace paramgeom {
namespace linalg {

// Element j of a 16-byte chunk of kDType values (little-endian), decoded exactly.
template <int kDType>
__device__ __forceinline__ float chunk_element(const uint4& v, int j) {
  const pg_u32 w[4] = {v.x, v.y, v.z, v.w};
  if constexpr (kDType == kFloat32) {
    return bits_to_float(w[j]);
  } else {
    return Storage<kDType>::decode(static_cast<pg_u16>(w[j >> 1] >> ((j & 1) * 16)));
  }
}

// One operand of the product: the rows of M1 (and M0, optional) as a tile source. The tile
// is kRows x kCols elements with the column index contiguous in memory.
template <int kDType, int kRows, int kCols>
struct TileLoader {
  typedef typename Storage<kDType>::type T;
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per chunk
  static constexpr int kChunksPerRow = kCols / kVec;
  static constexpr int kChunks = kRows * kChunksPerRow / kThreads;  // per thread
  static_assert(kCols % kVec == 0 && (kRows * kChunksPerRow) % kThreads == 0, "tile shape");

  const T* m1;
  const T* m0;  // nullptr: zero
  pg_i64 ld1, ld0, rows, cols;
  bool vec1, vec0;
  uint4 raw1[kChunks], raw0[kChunks];

  __device__ __forceinline__ TileLoader(const void* p1, const void* p0, pg_i64 l1, pg_i64 l0,
                                        pg_i64 nrows, pg_i64 ncols)
      : m1(static_cast<const T*>(p1)), m0(static_cast<const T*>(p0)), ld1(l1), ld0(l0),
        rows(nrows), cols(ncols) {
    vec1 = ((reinterpret_cast<pg_u64>(m1) | pg_u64(ld1) * sizeof(T)) & pg_u64(15)) == 0;
    vec0 = ((reinterpret_cast<pg_u64>(m0) | pg_u64(ld0) * sizeof(T)) & pg_u64(15)) == 0;
  }

  static __device__ __forceinline__ uint4 load_chunk(const T* base, pg_i64 ld, bool vec,
                                                     pg_i64 row, pg_i64 col, pg_i64 rows,
                                                     pg_i64 cols) {
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row >= rows || col >= cols) return v;
    const T* p = base + row * ld + col;
    if (vec && col + kVec <= cols) return __ldg(reinterpret_cast<const uint4*>(p));
    pg_u32 w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      if (col + e < cols) {
        if constexpr (sizeof(T) == 4) {
          w[e] = float_to_bits(p[e]);
        } else {
          w[e >> 1] |= static_cast<pg_u32>(p[e]) << ((e & 1) * 16);
        }
      }
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }

  // Chunk c of this thread: (row, column of its first element) inside the tile.
  static __device__ __forceinline__ int chunk_row(int c) {
    return (static_cast<int>(threadIdx.x) + c * kThreads) / kChunksPerRow;
  }
  static __device__ __forceinline__ int chunk_col(int c) {
    return (static_cast<int>(threadIdx.x) + c * kThreads) % kChunksPerRow * kVec;
  }

  // Global -> registers: the tile whose top-left element is (row0, col0).
  __device__ __forceinline__ void load(pg_i64 row0, pg_i64 col0) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const pg_i64 r = row0 + chunk_row(c), k = col0 + chunk_col(c);
      raw1[c] = load_chunk(m1, ld1, vec1, r, k, rows, cols);
      raw0[c] = m0 ? load_chunk(m0, ld0, vec0, r, k, rows, cols) : make_uint4(0u, 0u, 0u, 0u);
    }
  }

  // Registers -> shared: store(row, col, m1 - m0) for every element, in fp32.
  template <class Store>
  __device__ __forceinline__ void commit(Store store) const {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const int r = chunk_row(c), k = chunk_col(c);
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        store(r, k + e, chunk_element<kDType>(raw1[c], e) - chunk_element<kDType>(raw0[c], e));
    }
  }
};

// Physical column of logical column p in row r of the NN A tile: groups of four columns
// XOR-permuted within their 32-column block so that the transposing stores of a warp fall
// in 32 distinct banks (a warp stores 32/kChunksPerRow consecutive p of kChunksPerRow rows
// r spaced kVec apart). Reads of four aligned columns stay contiguous.
template <int kVec>
__device__ __forceinline__ int swizzle(int p, int r) {
  return p ^ ((((r / kVec) * (kVec / 4)) & 7) << 2);
}

__device__ __forceinline__ void write_value(void* out, pg_i64 index, int mode, double alpha,
                                            float v) {
  if (mode == kAccumulate64) {
    double* o = static_cast<double*>(out) + index;
    *o = *o + alpha * static_cast<double>(v);
  } else if (mode == kAccumulate32) {
    float* o = static_cast<float*>(out) + index;
    *o = static_cast<float>(static_cast<double>(*o) + alpha * static_cast<double>(v));
  } else {
    static_cast<float*>(out)[index] = v;
  }
}

// One block: tile (blockIdx.x, blockIdx.y) of C over reduction split blockIdx.z.
// mode kStore / kAccumulate*: `out` is C with row stride ldo; kPartial: `out` is the fp32
// workspace [splits][P][Q].
template <int kADType, int kBDType, bool kTransA>
__device__ __forceinline__ void gemm_block(const void* a1, const void* a0, pg_i64 lda1,
                                           pg_i64 lda0, const void* b1, const void* b0,
                                           pg_i64 ldb1, pg_i64 ldb0, pg_i64 P, pg_i64 Q,
                                           pg_i64 R, pg_i64 tiles_per_split, void* out,
                                           pg_i64 ldo, int mode, double alpha) {
  alignas(16) __shared__ float sA[kTileR][kTileP];
  alignas(16) __shared__ float sB[kTileR][kTileQ];
  typedef TileLoader<kADType, kTransA ? kTileR : kTileP, kTransA ? kTileP : kTileR> LoaderA;
  typedef TileLoader<kBDType, kTileR, kTileQ> LoaderB;
  constexpr int kVecA = LoaderA::kVec;

  const pg_i64 p0 = pg_i64(blockIdx.x) * kTileP;
  const pg_i64 q0 = pg_i64(blockIdx.y) * kTileQ;
  const pg_i64 steps = ceil_div(R, kTileR);
  const pg_i64 first = pg_i64(blockIdx.z) * tiles_per_split;
  const pg_i64 last = first + tiles_per_split < steps ? first + tiles_per_split : steps;

  LoaderA la(a1, a0, lda1, lda0, kTransA ? R : P, kTransA ? P : R);
  LoaderB lb(b1, b0, ldb1, ldb0, R, Q);
  const int tx = static_cast<int>(threadIdx.x) % 16;
  const int ty = static_cast<int>(threadIdx.x) / 16;

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  if (first < last) {
    if (kTransA)
      la.load(first * kTileR, p0);
    else
      la.load(p0, first * kTileR);
    lb.load(first * kTileR, q0);
  }
  for (pg_i64 s = first; s < last; ++s) {
    __syncthreads();  // the previous step's reads of sA / sB are done
    if (kTransA) {
      la.commit([&](int r, int p, float v) { sA[r][p] = v; });
    } else {
      la.commit([&](int p, int r, float v) { sA[r][swizzle<kVecA>(p, r)] = v; });
    }
    lb.commit([&](int r, int q, float v) { sB[r][q] = v; });
    __syncthreads();
    if (s + 1 < last) {  // the next step's global loads overlap this step's FMAs
      if (kTransA)
        la.load((s + 1) * kTileR, p0);
      else
        la.load(p0, (s + 1) * kTileR);
      lb.load((s + 1) * kTileR, q0);
    }
#pragma unroll 8
    for (int r = 0; r < kTileR; ++r) {
      const int sw = kTransA ? 0 : (((r / kVecA) * (kVecA / 4)) & 7) << 2;
      const float4 lo = *reinterpret_cast<const float4*>(&sA[r][(4 * ty) ^ sw]);
      const float4 hi = *reinterpret_cast<const float4*>(&sA[r][(64 + 4 * ty) ^ sw]);
      const float4 bq = *reinterpret_cast<const float4*>(&sB[r][4 * tx]);
      const float a[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      const float b[4] = {bq.x, bq.y, bq.z, bq.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(a[i], b[j], acc[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const pg_i64 p = p0 + (i < 4 ? 4 * ty + i : 64 + 4 * ty + (i - 4));
    if (p >= P) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const pg_i64 q = q0 + 4 * tx + j;
      if (q >= Q) continue;
      if (mode == kPartial)
        static_cast<float*>(out)[(pg_i64(blockIdx.z) * P + p) * Q + q] = acc[i][j];
      else
        write_value(out, p * ldo + q, mode, alpha, acc[i][j]);
    }
  }
}

// Split-K second pass: C[p, q] <- epilogue(sum over splits in order, in fp64), grid-stride
// over the P*Q elements (each is independent: the grid never changes the bits).
__device__ __forceinline__ void splitk_final(const float* partials, pg_i64 splits, pg_i64 P,
                                             pg_i64 Q, void* out, pg_i64 ldo, int mode,
                                             double alpha) {
  const pg_i64 n = P * Q;
  for (pg_i64 idx = pg_i64(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += pg_i64(gridDim.x) * blockDim.x) {
    double sum = 0.0;
    for (pg_i64 s = 0; s < splits; ++s) sum += static_cast<double>(partials[s * n + idx]);
    const pg_i64 p = idx / Q, q = idx % Q;
    if (mode == kAccumulate64) {
      double* o = static_cast<double*>(out) + p * ldo + q;
      *o = *o + alpha * sum;
    } else if (mode == kAccumulate32) {
      float* o = static_cast<float*>(out) + p * ldo + q;
      *o = static_cast<float>(static_cast<double>(*o) + alpha * sum);
    } else {
      static_cast<float*>(out)[p * ldo + q] = static_cast<float>(sum);
    }
  }
}

}  // namespace linalg
}  // namespace paramgeom

#endif  // device code
