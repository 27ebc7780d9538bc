// Host launchers of diff_matmul and gram_update (see linalg_cuda.h). The kernels come from
// the same sources NVRTC compiles for the cupy backend; the plan is paramgeom/launch_plan.h's.
#include "linalg_cuda.h"

#include "diff_matmul_kernels.cuh"
#include "gram_update_kernels.cuh"

namespace paramgeom {
namespace {

typedef void (*GemmKernel)(const void*, const void*, pg_i64, pg_i64, const void*, const void*,
                           pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, pg_i64, void*, pg_i64, int,
                           double);
typedef void (*FinalKernel)(const float*, pg_i64, pg_i64, pg_i64, void*, pg_i64, int, double);

// Indexed by kernel id (plan::kDiffMatmulKernelNames / kGramUpdateKernelNames, same order).
constexpr GemmKernel kDiffMatmul[plan::kDiffMatmulKernels] = {
    &paramgeom_diff_matmul_f32,  &paramgeom_diff_matmul_f32_t,  &paramgeom_diff_matmul_bf16,
    &paramgeom_diff_matmul_bf16_t, &paramgeom_diff_matmul_f16, &paramgeom_diff_matmul_f16_t,
};
constexpr GemmKernel kGramUpdate[plan::kGramUpdateKernels] = {
    &paramgeom_gram_update_f32,
    &paramgeom_gram_update_bf16,
    &paramgeom_gram_update_f16,
};

// Main pass (+ final pass when split), enqueued on `stream`.
cudaError_t launch(GemmKernel kernel, FinalKernel final, const plan::LinalgLaunch& l,
                   const void* a1, const void* a0, pg_i64 lda1, pg_i64 lda0, const void* b1,
                   const void* b0, pg_i64 ldb1, pg_i64 ldb0, pg_i64 P, pg_i64 Q, pg_i64 R,
                   void* out, pg_i64 ldo, int mode, double alpha, void* workspace,
                   cudaStream_t stream) {
  if (P == 0 || Q == 0) return cudaSuccess;
  const linalg::SplitPlan& plan = l.split;
  const dim3 grid(static_cast<unsigned>(plan.tiles_p), static_cast<unsigned>(plan.tiles_q),
                  static_cast<unsigned>(plan.splits));
  const bool split = plan.splits > 1;
  kernel<<<grid, linalg::kThreads, 0, stream>>>(a1, a0, lda1, lda0, b1, b0, ldb1, ldb0, P, Q,
                                                 R, plan.tiles_per_split,
                                                 split ? workspace : out, ldo,
                                                 split ? int(linalg::kPartial) : mode, alpha);
  if (split)
    final<<<l.final_blocks, linalg::kThreads, 0, stream>>>(
        static_cast<const float*>(workspace), plan.splits, P, Q, out, ldo, mode, alpha);
  return cudaGetLastError();
}

int finish(cudaError_t err, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = err;
  return err == cudaSuccess ? kOk : kCudaError;
}

}  // namespace

int diff_matmul_cuda(const void* w0, const void* w1, int dtype, pg_i64 m, pg_i64 n,
                     pg_i64 ld0, pg_i64 ld1, const float* x, pg_i64 k, bool transpose,
                     float* out, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                     cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  const int kid = plan::diff_matmul_kernel_id(dtype, transpose);
  if (kid < 0) return kBadDType;
  if (m < 0 || n < 0 || k < 0 || ld0 < 0 || ld1 < 0) return kBadArgument;
  pg_i64 P, Q, R;
  plan::diff_matmul_dims(m, n, k, transpose, &P, &Q, &R);
  const plan::LinalgLaunch l = plan::linalg_launch(P, Q, R);
  if (!l.fits) return kBadArgument;
  if (workspace_bytes < static_cast<size_t>(l.workspace_bytes) ||
      (l.split.splits > 1 && workspace == nullptr))
    return kBadArgument;
  return finish(launch(kDiffMatmul[kid], paramgeom_diff_matmul_final, l, w1, w0, ld1, ld0, x,
                       nullptr, k, 0, P, Q, R, out, k, linalg::kStore, 1.0, workspace, stream),
                cuda_error);
}

int gram_update_cuda(void* G, bool g_is_f64, const void* x, const void* x0, int dtype,
                     pg_i64 r, pg_i64 n, pg_i64 ldx, pg_i64 ldx0, double alpha, void* workspace,
                     size_t workspace_bytes, cudaStream_t stream, cudaError_t* cuda_error) {
  if (cuda_error) *cuda_error = cudaSuccess;
  const int kid = plan::gram_update_kernel_id(dtype);
  if (kid < 0) return kBadDType;
  if (r < 0 || n < 0 || ldx < 0 || ldx0 < 0) return kBadArgument;
  pg_i64 P, Q, R;
  plan::gram_update_dims(r, n, &P, &Q, &R);
  const plan::LinalgLaunch l = plan::linalg_launch(P, Q, R);
  if (!l.fits) return kBadArgument;
  if (workspace_bytes < static_cast<size_t>(l.workspace_bytes) ||
      (l.split.splits > 1 && workspace == nullptr))
    return kBadArgument;
  if (r == 0) return kOk;  // nothing to add
  const int mode = g_is_f64 ? linalg::kAccumulate64 : linalg::kAccumulate32;
  return finish(launch(kGramUpdate[kid], paramgeom_gram_update_final, l, x, x0, ldx, ldx0, x,
                       x0, ldx, ldx0, P, Q, R, G, n, mode, alpha, workspace, stream),
                cuda_error);
}

}  // namespace paramgeom
