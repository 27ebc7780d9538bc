// nanobind module paramgeom._C_cuda: argument checks and a call into diff_stats_cuda.h.
// Arrays arrive through DLPack with no copy; the inputs are integer bit views of the
// storage dtype (python/paramgeom/_dtypes.py), all arrays live on one CUDA device, and
// the kernels run on the caller's stream (an integer cudaStream_t, 0 = legacy default).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "binding_checks.h"
#include "diff_stats_cuda.h"

namespace nb = nanobind;
using namespace nb::literals;

void register_linalg(nb::module_& m);  // bindings_linalg.cu: diff_matmul, gram_update

namespace {

using Array = nb::ndarray<>;
using InArray = nb::ndarray<nb::ro>;
using paramgeom::bindings::check_bits_view;
using paramgeom::bindings::DeviceGuard;
using paramgeom::bindings::is_cuda;
using paramgeom::bindings::require;

// A contiguous 1-D CUDA vector of T with `count` elements (at least `count` unless exact).
template <typename T>
T* vector_ptr(const Array& a, const char* name, size_t count, bool exact, int device_id) {
  const std::string n(name);
  require(is_cuda(a.device_type()), n + ": expected a CUDA array");
  require(a.device_id() == device_id, n + ": on another device than w0");
  require(a.dtype() == nb::dtype<T>(),
          n + (std::is_same_v<T, double> ? ": expected float64" : ": expected int64"));
  require(a.ndim() == 1 && (a.shape(0) <= 1 || a.stride(0) == 1),
          n + ": expected a contiguous 1-D array");
  require(exact ? a.shape(0) == count : a.shape(0) >= count,
          n + ": expected " + (exact ? "" : "at least ") + std::to_string(count) + " elements");
  return static_cast<T*>(a.data());
}

// A float32 block-scale grid on `device` covering the (rows, cols) view whose row 0 is
// weight row `row0` (paramgeom/diff_stats.h, scale_grid_covers); returns its row stride.
pg_i64 check_scale_grid(const InArray& s, const std::string& name, pg_i64 rows, pg_i64 cols,
                        pg_i64 row0, int device) {
  using namespace paramgeom;
  paramgeom::bindings::check_device(s, name, device);
  require(s.dtype() == nb::dtype<float>(), name + ": expected float32");
  require(s.ndim() == 2, name + ": expected a 2-D scale grid");
  require(s.shape(1) <= 1 || s.stride(1) == 1, name + ": must have contiguous rows");
  require(s.shape(0) <= 1 || s.stride(0) >= 0, name + ": negative row stride");
  require(scale_grid_covers(static_cast<pg_i64>(s.shape(0)), static_cast<pg_i64>(s.shape(1)),
                            rows, cols, row0),
          name + " of shape (" + std::to_string(s.shape(0)) + ", " +
              std::to_string(s.shape(1)) + ") does not cover weight rows [" +
              std::to_string(row0) + ", " + std::to_string(row0 + rows) + ") of " +
              std::to_string(cols) + " columns in " + std::to_string(kScaleBlock) + "-blocks");
  return s.shape(0) > 1 ? static_cast<pg_i64>(s.stride(0)) : 0;
}

void diff_stats(const InArray& w0, const InArray& w1, int dtype,
                const std::vector<double>& rel_tols, const std::vector<double>& abs_tols,
                bool cast_bf16, int changed_index, const Array& counts, const Array& sums,
                const std::optional<Array>& row_changed,
                const std::optional<Array>& row_sq_delta, const Array& workspace,
                std::uintptr_t stream, const std::optional<InArray>& scale0,
                const std::optional<InArray>& scale1, pg_i64 scale_row0) {
  using namespace paramgeom;
  require(dtype >= kFloat32 && dtype <= kFloat8E5M2,
          "dtype: unknown dtype code " + std::to_string(dtype));
  check_bits_view(w0, "w0", dtype, -1);
  check_bits_view(w1, "w1", dtype, -1);
  require(w1.device_id() == w0.device_id(), "w1: on another device than w0");
  require(w0.shape(0) == w1.shape(0) && w0.shape(1) == w1.shape(1),
          "w1: shape differs from w0");
  require(rel_tols.size() <= kMaxTols, "rel_tols: at most 8 tolerances");
  require(abs_tols.size() <= kMaxTols, "abs_tols: at most 8 tolerances");
  require(changed_index == kEqual || (changed_index == kRel0 && !rel_tols.empty()),
          "changed_index: must be EQUAL, or REL0 with a relative tolerance");
  require(row_changed.has_value() == row_sq_delta.has_value(),
          "row_changed: give row_changed and row_sq_delta together");

  const int device = w0.device_id();
  const pg_i64 rows = static_cast<pg_i64>(w0.shape(0));
  const pg_i64 cols = static_cast<pg_i64>(w0.shape(1));
  DiffStatsArgs args{};
  args.w0 = w0.data();
  args.w1 = w1.data();
  args.dtype = dtype;
  args.rows = rows;
  args.cols = cols;
  args.stride0 = w0.stride(0);
  args.stride1 = w1.stride(0);
  args.params.n_rel = static_cast<int>(rel_tols.size());
  args.params.n_abs = static_cast<int>(abs_tols.size());
  args.params.cast_bf16 = cast_bf16 ? 1 : 0;
  args.params.changed_index = changed_index;
  for (size_t i = 0; i < rel_tols.size(); ++i) args.params.rel_tols[i] = rel_tols[i];
  for (size_t i = 0; i < abs_tols.size(); ++i) args.params.abs_tols[i] = abs_tols[i];
  require(scale0.has_value() == scale1.has_value(), "scale0 and scale1 come together");
  if (scale0) {
    require(dtype == kFloat8E4M3 || dtype == kFloat8E5M2,
            "block scales need fp8 inputs, got dtype code " + std::to_string(dtype));
    require(scale_row0 >= 0, "scale_row0 must be >= 0");
    args.scales.stride0 = check_scale_grid(*scale0, "scale0", rows, cols, scale_row0, device);
    args.scales.stride1 = check_scale_grid(*scale1, "scale1", rows, cols, scale_row0, device);
    args.scales.scale0 = static_cast<const float*>(scale0->data());
    args.scales.scale1 = static_cast<const float*>(scale1->data());
    args.scales.row0 = scale_row0;
  }
  args.counts = vector_ptr<pg_i64>(counts, "counts", kNumCounts, false, device);
  args.sums = vector_ptr<double>(sums, "sums", kNumSums, false, device);
  const bool per_row = row_changed.has_value();
  if (per_row) {
    args.row_changed = vector_ptr<pg_i64>(*row_changed, "row_changed", rows, true, device);
    args.row_sq_delta = vector_ptr<double>(*row_sq_delta, "row_sq_delta", rows, true, device);
  }
  const size_t needed =
      static_cast<size_t>(plan::diff_stats_launch(rows, cols, per_row, 1).workspace_bytes);
  require(is_cuda(workspace.device_type()) && workspace.device_id() == device,
          "workspace: expected a CUDA array on the device of w0");
  require(workspace.ndim() == 1 && (workspace.shape(0) <= 1 || workspace.stride(0) == 1),
          "workspace: expected a contiguous 1-D array");
  require(workspace.nbytes() >= needed, "workspace: needs " + std::to_string(needed) +
                                            " bytes, got " +
                                            std::to_string(workspace.nbytes()));

  int status = kOk;
  cudaError_t err = cudaSuccess;
  {
    nb::gil_scoped_release release;
    DeviceGuard guard(device);
    status = diff_stats_cuda(args, workspace.data(), workspace.nbytes(),
                             reinterpret_cast<cudaStream_t>(stream), &err);
  }
  if (status == kCudaError)
    throw std::runtime_error(std::string("paramgeom diff_stats CUDA launch failed: ") +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  if (status != kOk)
    throw nb::value_error(("diff_stats: rejected arguments (status " +
                           std::to_string(status) + ")")
                              .c_str());
}

std::pair<bool, std::string> runtime_status() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    const std::string detail =
        std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    if (err == cudaErrorInsufficientDriver)
      return {false, "no CUDA driver, or one older than the CUDA runtime " +
                         std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string(CUDART_VERSION % 1000 / 10) +
                         " this module was built with (" + detail + ")"};
    if (err == cudaErrorNoDevice) return {false, "no GPU (" + detail + ")"};
    return {false, "CUDA runtime unusable (" + detail + ")"};
  }
  if (count == 0) return {false, "no GPU (cudaGetDeviceCount found 0 devices)"};
  return {true, ""};
}

}  // namespace

NB_MODULE(_C_cuda, m) {
  using namespace paramgeom;
  m.doc() = "paramgeom CUDA kernels (nvcc build); see csrc/cuda/diff_stats_cuda.h";
  m.def("diff_stats", &diff_stats, "w0"_a, "w1"_a, nb::kw_only(), "dtype"_a, "rel_tols"_a,
        "abs_tols"_a, "cast_bf16"_a, "changed_index"_a, "counts"_a, "sums"_a,
        "row_changed"_a = nb::none(), "row_sq_delta"_a = nb::none(), "workspace"_a,
        "stream"_a = 0, "scale0"_a = nb::none(), "scale1"_a = nb::none(), "scale_row0"_a = 0,
        "Fused diff statistics of two (rows, cols) integer bit views on one CUDA device; "
        "writes counts (int64), sums (float64) and the optional per-row outputs in place. "
        "With scale0/scale1 (float32 grids, fp8 inputs) the inputs are block-scaled fp8 "
        "whose row 0 is weight row scale_row0.");
  m.def(
      "workspace_bytes",
      [](pg_i64 rows, pg_i64 cols, bool per_row) {
        return plan::diff_stats_launch(rows, cols, per_row, 1).workspace_bytes;
      },
      "rows"_a, "cols"_a, "per_row"_a,
      "Bytes of device workspace diff_stats needs (paramgeom/launch_plan.h).");
  m.def("runtime_status", &runtime_status,
        "(usable, reason): whether the CUDA runtime finds a driver and a GPU.");
  register_linalg(m);
}
