// paramgeom._C_cuda bindings of diff_matmul and gram_update (csrc/cuda/linalg_cuda.h):
// argument checks that name the argument, then one call with the GIL released. The stored
// inputs arrive as integer bit views of their dtype (python/paramgeom/_dtypes.py); x, out
// and G as float arrays. All arrays live on one CUDA device; the kernels run on the caller's
// stream (an integer cudaStream_t, 0 = legacy default). register_linalg is called from the
// NB_MODULE in bindings_cuda.cu.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "binding_checks.h"
#include "linalg_cuda.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Array = nb::ndarray<>;
using InArray = nb::ndarray<nb::ro>;
using paramgeom::bindings::check_bits_view;
using paramgeom::bindings::check_device;
using paramgeom::bindings::DeviceGuard;
using paramgeom::bindings::require;

// Workspace bytes of one call (paramgeom/launch_plan.h).
pg_i64 diff_matmul_workspace_bytes(pg_i64 m, pg_i64 n, pg_i64 k, bool transpose) {
  pg_i64 P, Q, R;
  paramgeom::plan::diff_matmul_dims(m, n, k, transpose, &P, &Q, &R);
  return paramgeom::plan::linalg_launch(P, Q, R).workspace_bytes;
}
pg_i64 gram_update_workspace_bytes(pg_i64 r, pg_i64 n) {
  pg_i64 P, Q, R;
  paramgeom::plan::gram_update_dims(r, n, &P, &Q, &R);
  return paramgeom::plan::linalg_launch(P, Q, R).workspace_bytes;
}

// A C-contiguous 2-D float array of the given shape (fp32, or fp64 when allowed).
template <class A>
void check_dense(const A& a, const std::string& name, size_t rows, size_t cols, bool f64_ok,
                 int device) {
  check_device(a, name, device);
  const bool f32 = a.dtype() == nb::dtype<float>();
  require(f32 || (f64_ok && a.dtype() == nb::dtype<double>()),
          name + (f64_ok ? ": expected float32 or float64" : ": expected float32"));
  require(a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols,
          name + ": expected shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  require((cols <= 1 || a.stride(1) == 1) && (rows <= 1 || a.stride(0) == int64_t(cols)),
          name + ": expected a contiguous array");
}

void check_workspace(const Array& w, size_t needed, int device) {
  check_device(w, "workspace", device);
  require(w.ndim() == 1 && (w.shape(0) <= 1 || w.stride(0) == 1),
          "workspace: expected a contiguous 1-D array");
  require(w.nbytes() >= needed, "workspace: needs " + std::to_string(needed) + " bytes, got " +
                                    std::to_string(w.nbytes()));
}

void raise_status(const char* op, int status, cudaError_t err) {
  if (status == paramgeom::kCudaError)
    throw std::runtime_error(std::string("paramgeom ") + op + " CUDA launch failed: " +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  if (status != paramgeom::kOk)
    throw nb::value_error(
        (std::string(op) + ": rejected arguments (status " + std::to_string(status) + ")")
            .c_str());
}

void check_dtype(int dtype) {
  require(dtype == paramgeom::kFloat32 || dtype == paramgeom::kBFloat16 ||
              dtype == paramgeom::kFloat16,
          "dtype: expected float32, bfloat16 or float16 (code " + std::to_string(dtype) + ")");
}

void diff_matmul(const InArray& w0, const InArray& w1, const InArray& x, const Array& out,
                 int dtype, bool transpose, const Array& workspace, std::uintptr_t stream) {
  using namespace paramgeom;
  check_dtype(dtype);
  check_bits_view(w0, "w0", dtype, -1);
  const int device = w0.device_id();
  check_bits_view(w1, "w1", dtype, device);
  require(w0.shape(0) == w1.shape(0) && w0.shape(1) == w1.shape(1), "w1: shape differs from w0");
  const size_t m = w0.shape(0), n = w0.shape(1);
  require(x.ndim() == 2, "x: expected a 2-D array");
  const size_t k = x.shape(1);
  check_dense(x, "x", transpose ? m : n, k, false, device);
  check_dense(out, "out", transpose ? n : m, k, false, device);
  const size_t needed = static_cast<size_t>(diff_matmul_workspace_bytes(m, n, k, transpose));
  check_workspace(workspace, needed, device);

  int status = kOk;
  cudaError_t err = cudaSuccess;
  {
    nb::gil_scoped_release release;
    DeviceGuard guard(device);
    status = diff_matmul_cuda(w0.data(), w1.data(), dtype, pg_i64(m), pg_i64(n), w0.stride(0),
                              w1.stride(0), static_cast<const float*>(x.data()), pg_i64(k),
                              transpose, static_cast<float*>(out.data()), workspace.data(),
                              workspace.nbytes(), reinterpret_cast<cudaStream_t>(stream), &err);
  }
  raise_status("diff_matmul", status, err);
}

void gram_update(const Array& G, const InArray& x, const std::optional<InArray>& x0, int dtype,
                 double alpha, const Array& workspace, std::uintptr_t stream) {
  using namespace paramgeom;
  check_dtype(dtype);
  check_bits_view(x, "x", dtype, -1);
  const int device = x.device_id();
  const size_t r = x.shape(0), n = x.shape(1);
  if (x0) {
    check_bits_view(*x0, "x0", dtype, device);
    require(x0->shape(0) == r && x0->shape(1) == n, "x0: shape differs from x");
  }
  check_dense(G, "G", n, n, true, device);
  const size_t needed = static_cast<size_t>(gram_update_workspace_bytes(r, n));
  check_workspace(workspace, needed, device);

  int status = kOk;
  cudaError_t err = cudaSuccess;
  {
    nb::gil_scoped_release release;
    DeviceGuard guard(device);
    status = gram_update_cuda(G.data(), G.dtype() == nb::dtype<double>(), x.data(),
                              x0 ? x0->data() : nullptr, dtype, pg_i64(r), pg_i64(n),
                              x.stride(0), x0 ? x0->stride(0) : 0, alpha, workspace.data(),
                              workspace.nbytes(), reinterpret_cast<cudaStream_t>(stream), &err);
  }
  raise_status("gram_update", status, err);
}

}  // namespace

void register_linalg(nb::module_& m) {
  using namespace paramgeom;
  m.def("diff_matmul", &diff_matmul, "w0"_a, "w1"_a, "x"_a, "out"_a, nb::kw_only(), "dtype"_a,
        "transpose"_a, "workspace"_a, "stream"_a = 0,
        "out = (w1 - w0) @ x, or (w1 - w0)^T @ x with transpose (fp32 x and out, w0 / w1 "
        "as integer bit views of `dtype`), the difference formed in fp32 registers.");
  m.def("gram_update", &gram_update, "G"_a, "x"_a, "x0"_a = nb::none(), nb::kw_only(),
        "dtype"_a, "alpha"_a, "workspace"_a, "stream"_a = 0,
        "In place G += alpha * (x - x0)^T (x - x0) (x0 optional; G float32 or float64).");
  m.def("diff_matmul_workspace_bytes", &diff_matmul_workspace_bytes, "m"_a, "n"_a, "k"_a,
        "transpose"_a, "Bytes of device workspace diff_matmul needs (0: none).");
  m.def("gram_update_workspace_bytes", &gram_update_workspace_bytes, "r"_a, "n"_a,
        "Bytes of device workspace gram_update needs (0: none).");
}
