// Host launchers of diff_matmul and gram_update (see linalg_cuda.h). The kernels come from
// the same sources NVRTC compiles for the cupy backend; the plan is linalg::split_plan.
#include "linalg_cuda.h"

#include "diff_matmul_kernels.cuh"
#include "gram_update_kernels.cuh"

namespace paramgeom {
namespace {

using linalg::SplitPlan;

typedef void (*GemmKernel)(const void*, const void*, pg_i64, pg_i64, const void*, const void*,
                           pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, void*, pg_i64, int,
                           double);
typedef void (*FinalKernel)(const float*, pg_i64, pg_i64, pg_i64, void*, pg_i64, int, double);

struct Entry {
  GemmKernel kernel;
  const char* name;
};

// Index: dtype * 2 + transpose (diff_matmul_kernels.cuh ids).
const Entry kDiffMatmul[6] = {
    {paramgeom_diff_matmul_f32, "paramgeom_diff_matmul_f32"},
    {paramgeom_diff_matmul_f32_t, "paramgeom_diff_matmul_f32_t"},
    {paramgeom_diff_matmul_bf16, "paramgeom_diff_matmul_bf16"},
    {paramgeom_diff_matmul_bf16_t, "paramgeom_diff_matmul_bf16_t"},
    {paramgeom_diff_matmul_f16, "paramgeom_diff_matmul_f16"},
    {paramgeom_diff_matmul_f16_t, "paramgeom_diff_matmul_f16_t"},
};
const Entry kGramUpdate[3] = {
    {paramgeom_gram_update_f32, "paramgeom_gram_update_f32"},
    {paramgeom_gram_update_bf16, "paramgeom_gram_update_bf16"},
    {paramgeom_gram_update_f16, "paramgeom_gram_update_f16"},
};

bool known_dtype(int dtype) {
  return dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16;
}

// P, Q, R of each op (linalg_tiles.h).
SplitPlan diff_matmul_plan(pg_i64 m, pg_i64 n, pg_i64 k, bool transpose) {
  return transpose ? linalg::split_plan(n, k, m) : linalg::split_plan(m, k, n);
}

bool plan_fits(const SplitPlan& plan) {
  return plan.tiles_p <= 0x7fffffff && plan.tiles_q <= linalg::kMaxGridYZ &&
         plan.splits <= linalg::kMaxGridYZ;
}

// Main pass (+ final pass when split), enqueued on `stream`.
cudaError_t launch(GemmKernel kernel, FinalKernel final, const SplitPlan& plan, const void* a1,
                   const void* a0, pg_i64 lda1, pg_i64 lda0, const void* b1, const void* b0,
                   pg_i64 ldb1, pg_i64 ldb0, pg_i64 P, pg_i64 Q, pg_i64 R, void* out,
                   pg_i64 ldo, int mode, double alpha, void* workspace, cudaStream_t stream) {
  if (P == 0 || Q == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(plan.tiles_p), static_cast<unsigned>(plan.tiles_q),
                  static_cast<unsigned>(plan.splits));
  const bool split = plan.splits > 1;
  kernel<<<grid, linalg::kThreads, 0, stream>>>(a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, P, Q,
                                                 R, plan.tiles_per_split,
                                                 split ? workspace : out, ldo,
                                                 split ? int(linalg::kPartial) : mode, alpha);
  if (split)
    final<<<linalg_cuda_final_blocks(P, Q), linalg::kThreads, 0, stream>>>(
        static_cast<const float*>(workspace), plan.splits, P, Q, out, ldo, mode, alpha);
  return cudaGetLastError();
}

int finish(cudaError_t err, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = err;
  return err == cudaSuccess ? kOk : kCudaError;
}

}  // namespace

size_t diff_matmul_cuda_workspace_bytes(pg_i64 m, pg_i64 n, pg_i64 k, bool transpose) {
  return static_cast<size_t>(transpose ? linalg::split_workspace_bytes(n, k, m)
                                       : linalg::split_workspace_bytes(m, k, n));
}

size_t gram_update_cuda_workspace_bytes(pg_i64 r, pg_i64 n) {
  return static_cast<size_t>(linalg::split_workspace_bytes(n, n, r));
}

const char* diff_matmul_cuda_kernel_name(int dtype, bool transpose) {
  return known_dtype(dtype) ? kDiffMatmul[dtype * 2 + (transpose ? 1 : 0)].name : nullptr;
}

const char* gram_update_cuda_kernel_name(int dtype) {
  return known_dtype(dtype) ? kGramUpdate[dtype].name : nullptr;
}

int linalg_cuda_final_blocks(pg_i64 P, pg_i64 Q) {
  const pg_i64 blocks = linalg::ceil_div(P * Q, linalg::kThreads);
  const pg_i64 cap = pg_i64(1) << 16;
  return static_cast<int>(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
}

int diff_matmul_cuda(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                     pg_i64 ld0, pg_i64 ld1, const float* x, pg_i64 k, bool transpose,
                     float* out, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                     cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  if (!known_dtype(dtype)) return kBadDType;
  if (m < 0 || n < 0 || k < 0 || ld0 < 0 || ld1 < 0) return kBadArgument;
  const SplitPlan plan = diff_matmul_plan(m, n, k, transpose);
  if (!plan_fits(plan)) return kBadArgument;
  if (workspace_bytes < diff_matmul_cuda_workspace_bytes(m, n, k, transpose) ||
      (plan.splits > 1 && workspace == nullptr))
    return kBadArgument;
  const Entry& e = kDiffMatmul[dtype * 2 + (transpose ? 1 : 0)];
  const pg_i64 P = transpose ? n : m, R = transpose ? m : n;
  return finish(launch(e.kernel, paramgeom_diff_matmul_final, plan, w1, w0, ld1, ld0, x,
                       nullptr, k, 0, P, k, R, out, k, linalg::kStore, 1.0, workspace, stream),
                cuda_error);
}

int gram_update_cuda(void* G, bool g_is_f64, const void* x, const void* x0, int dtype,
                     pg_i64 r, pg_i64 n, pg_i64 ldx, pg_i64 ldx0, double alpha, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  if (!known_dtype(dtype)) return kBadDType;
  if (r < 0 || n < 0 || ldx < 0 || ldx0 < 0) return kBadArgument;
  const SplitPlan plan = linalg::split_plan(n, n, r);
  if (!plan_fits(plan)) return kBadArgument;
  if (workspace_bytes < gram_update_cuda_workspace_bytes(r, n) ||
      (plan.splits > 1 && workspace == nullptr))
    return kBadArgument;
  if (r == 0) return kOk;  // nothing to add
  const int mode = g_is_f64 ? linalg::kAccumulate64 : linalg::kAccumulate32;
  return finish(launch(kGramUpdate[dtype].kernel, paramgeom_gram_update_final, plan, x, x0, ldx,
                       ldx0, x, x0, ldx, ldx0, n, n, r, G, n, mode, alpha, workspace, stream),
                cuda_error);
}

}  // namespace paramgeom
