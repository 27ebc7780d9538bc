// paramgeom._C: thin nanobind bindings of the CPU kernels. Checks, then one call; the
// kernels themselves know nothing of Python (csrc/cpu/).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <omp.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "cpu/diff_stats_cpu.h"
#include "cpu/diff_matmul_cpu.h"
#include "cpu/diff_tile_cpu.h"
#include "cpu/fma_peak.h"
#include "cpu/gram_update_cpu.h"
#include "io/guarded_map.h"
#include "paramgeom/diff_stats.h"
#include "paramgeom/launch_plan.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using HostArray = nb::ndarray<nb::device::cpu>;
using I64Vec = nb::ndarray<int64_t, nb::device::cpu, nb::ndim<1>, nb::c_contig>;
using F64Vec = nb::ndarray<double, nb::device::cpu, nb::ndim<1>, nb::c_contig>;

#define PG_CHECK(cond, msg)                                      \
  do {                                                           \
    if (!(cond)) throw nb::value_error(std::string(msg).c_str()); \
  } while (0)

std::string shape_str(const HostArray& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + ")";
}

// A kernel's paramgeom::Status as the Python exception it means; `failure` names the
// kernel and what else went wrong (kBadArgument and the rest).
void raise_on_status(int status, int dtype, const std::string& failure) {
  if (status == paramgeom::kOk) return;
  if (status == paramgeom::kOutOfMemory) throw std::bad_alloc();
  if (status == paramgeom::kBadDType)
    throw nb::type_error(("unsupported dtype code " + std::to_string(dtype)).c_str());
  throw nb::value_error(failure.c_str());
}

void check_bits_view(const HostArray& a, const char* name, int dtype) {
  PG_CHECK(a.ndim() == 2, std::string(name) + " must be a 2-D bit view, got ndim " +
                              std::to_string(a.ndim()));
  PG_CHECK(a.shape(1) <= 1 || a.stride(1) == 1,
           std::string(name) + " must have contiguous rows (inner stride 1), got stride " +
               std::to_string(a.stride(1)));
  PG_CHECK(static_cast<int>(a.itemsize()) == paramgeom::dtype_size(dtype),
           std::string(name) + " item size " + std::to_string(a.itemsize()) +
               " does not match dtype code " + std::to_string(dtype));
}

paramgeom::DiffStatsParams make_params(const std::vector<double>& rel,
                                       const std::vector<double>& abs, bool cast_bf16,
                                       int changed_index) {
  PG_CHECK(rel.size() <= paramgeom::kMaxTols && abs.size() <= paramgeom::kMaxTols,
           "at most " + std::to_string(paramgeom::kMaxTols) + " tolerances of each kind");
  PG_CHECK(changed_index == paramgeom::kEqual || (changed_index == paramgeom::kRel0 && !rel.empty()),
           "changed_index must be kEqual, or kRel0 with a relative tolerance");
  paramgeom::DiffStatsParams p{};
  p.n_rel = static_cast<int>(rel.size());
  p.n_abs = static_cast<int>(abs.size());
  p.cast_bf16 = cast_bf16 ? 1 : 0;
  p.changed_index = changed_index;
  for (size_t i = 0; i < rel.size(); ++i) p.rel_tols[i] = rel[i];
  for (size_t i = 0; i < abs.size(); ++i) p.abs_tols[i] = abs[i];
  return p;
}

using ScaleGrid = nb::ndarray<const float, nb::device::cpu, nb::ndim<2>>;

// One block-scale grid against a (rows, cols) view starting at weight row `row0`.
void check_scale_grid(const ScaleGrid& s, const char* name, int64_t rows, int64_t cols,
                      int64_t row0) {
  PG_CHECK(s.shape(1) <= 1 || s.stride(1) == 1, std::string(name) + " must have contiguous rows");
  PG_CHECK(paramgeom::scale_grid_covers(static_cast<int64_t>(s.shape(0)),
                                        static_cast<int64_t>(s.shape(1)), rows, cols, row0),
           std::string(name) + " of shape (" + std::to_string(s.shape(0)) + ", " +
               std::to_string(s.shape(1)) + ") does not cover weight rows [" +
               std::to_string(row0) + ", " + std::to_string(row0 + rows) + ") of " +
               std::to_string(cols) + " columns in " + std::to_string(paramgeom::kScaleBlock) +
               "-blocks");
}

void diff_stats(HostArray w0, HostArray w1, int dtype, const std::vector<double>& rel_tols,
                const std::vector<double>& abs_tols, bool cast_bf16, int changed_index,
                I64Vec counts, F64Vec sums, std::optional<I64Vec> row_changed,
                std::optional<F64Vec> row_sq_delta, int num_threads, const std::string& isa,
                std::optional<ScaleGrid> scale0, std::optional<ScaleGrid> scale1,
                int64_t scale_row0) {
  check_bits_view(w0, "w0", dtype);
  check_bits_view(w1, "w1", dtype);
  PG_CHECK(w0.shape(0) == w1.shape(0) && w0.shape(1) == w1.shape(1),
           "shape mismatch: w0 " + shape_str(w0) + " vs w1 " + shape_str(w1));
  PG_CHECK(counts.shape(0) == paramgeom::kNumCounts && sums.shape(0) == paramgeom::kNumSums,
           "counts/sums have the wrong length");
  PG_CHECK(row_changed.has_value() == row_sq_delta.has_value(),
           "row_changed and row_sq_delta come together");
  const int64_t rows = static_cast<int64_t>(w0.shape(0));
  if (row_changed) {
    PG_CHECK(static_cast<int64_t>(row_changed->shape(0)) == rows &&
                 static_cast<int64_t>(row_sq_delta->shape(0)) == rows,
             "per-row outputs need one entry per row (" + std::to_string(rows) + ")");
  }
  paramgeom::DiffStatsArgs args{};
  args.w0 = w0.data();
  args.w1 = w1.data();
  args.dtype = dtype;
  args.rows = rows;
  args.cols = static_cast<int64_t>(w0.shape(1));
  args.stride0 = rows > 1 ? static_cast<int64_t>(w0.stride(0)) : args.cols;
  args.stride1 = rows > 1 ? static_cast<int64_t>(w1.stride(0)) : args.cols;
  args.params = make_params(rel_tols, abs_tols, cast_bf16, changed_index);
  args.counts = counts.data();
  args.sums = sums.data();
  args.row_changed = row_changed ? row_changed->data() : nullptr;
  args.row_sq_delta = row_sq_delta ? row_sq_delta->data() : nullptr;
  PG_CHECK(scale0.has_value() == scale1.has_value(), "scale0 and scale1 come together");
  if (scale0) {
    PG_CHECK(dtype == paramgeom::kFloat8E4M3 || dtype == paramgeom::kFloat8E5M2,
             "block scales need fp8 inputs, got dtype code " + std::to_string(dtype));
    PG_CHECK(scale_row0 >= 0, "scale_row0 must be >= 0");
    check_scale_grid(*scale0, "scale0", args.rows, args.cols, scale_row0);
    check_scale_grid(*scale1, "scale1", args.rows, args.cols, scale_row0);
    args.scales.scale0 = scale0->data();
    args.scales.scale1 = scale1->data();
    args.scales.stride0 = scale0->shape(0) > 1 ? static_cast<int64_t>(scale0->stride(0)) : 0;
    args.scales.stride1 = scale1->shape(0) > 1 ? static_cast<int64_t>(scale1->stride(0)) : 0;
    args.scales.row0 = scale_row0;
  }
  int status;
  {
    nb::gil_scoped_release release;
    status = paramgeom::diff_stats_cpu(args, num_threads, isa.c_str());
  }
  raise_on_status(status, dtype,
                  "diff_stats_cpu failed (status " + std::to_string(status) + ", isa '" + isa +
                      "')");
}

using F32Matrix = nb::ndarray<float, nb::device::cpu, nb::ndim<2>>;

void diff_tile(HostArray w0, HostArray w1, int dtype, F32Matrix out, int num_threads) {
  check_bits_view(w0, "w0", dtype);
  check_bits_view(w1, "w1", dtype);
  PG_CHECK(w0.shape(0) == w1.shape(0) && w0.shape(1) == w1.shape(1) &&
               out.shape(0) == w0.shape(0) && out.shape(1) == w0.shape(1),
           "shape mismatch: w0 " + shape_str(w0) + ", w1 " + shape_str(w1) + ", out (" +
               std::to_string(out.shape(0)) + ", " + std::to_string(out.shape(1)) + ")");
  PG_CHECK(out.shape(1) <= 1 || out.stride(1) == 1, "out must have contiguous rows");
  const int64_t rows = static_cast<int64_t>(w0.shape(0));
  const int64_t cols = static_cast<int64_t>(w0.shape(1));
  int status;
  {
    nb::gil_scoped_release release;
    status = paramgeom::diff_tile_cpu(w0.data(), w1.data(), dtype, rows, cols,
                                      static_cast<int64_t>(w0.stride(0)),
                                      static_cast<int64_t>(w1.stride(0)), out.data(),
                                      static_cast<int64_t>(out.stride(0)), num_threads);
  }
  raise_on_status(status, dtype, "diff_tile_cpu: bad arguments");
}

using F32MatrixC = nb::ndarray<const float, nb::device::cpu, nb::ndim<2>>;

void diff_matmul(HostArray w0, HostArray w1, int dtype, F32MatrixC x, F32Matrix out,
                 bool transpose, int num_threads) {
  check_bits_view(w0, "w0", dtype);
  check_bits_view(w1, "w1", dtype);
  PG_CHECK(w0.shape(0) == w1.shape(0) && w0.shape(1) == w1.shape(1),
           "shape mismatch: w0 " + shape_str(w0) + " vs w1 " + shape_str(w1));
  const int64_t m = static_cast<int64_t>(w0.shape(0));
  const int64_t n = static_cast<int64_t>(w0.shape(1));
  const int64_t inner = transpose ? m : n, outer = transpose ? n : m;
  const int64_t l = static_cast<int64_t>(x.shape(1));
  PG_CHECK(static_cast<int64_t>(x.shape(0)) == inner && static_cast<int64_t>(out.shape(0)) == outer &&
               static_cast<int64_t>(out.shape(1)) == l,
           "shape mismatch: w " + shape_str(w0) + ", x (" + std::to_string(x.shape(0)) + ", " +
               std::to_string(x.shape(1)) + "), out (" + std::to_string(out.shape(0)) + ", " +
               std::to_string(out.shape(1)) + "), transpose " + (transpose ? "true" : "false"));
  PG_CHECK((l <= 1 || x.stride(1) == 1) && (l <= 1 || out.stride(1) == 1),
           "x and out must have contiguous rows");
  const int64_t ldx = x.shape(0) > 1 ? static_cast<int64_t>(x.stride(0)) : l;
  const int64_t ldo = out.shape(0) > 1 ? static_cast<int64_t>(out.stride(0)) : l;
  int status;
  {
    nb::gil_scoped_release release;
    status = paramgeom::diff_matmul_cpu(w0.data(), w1.data(), dtype, m, n,
                                        static_cast<int64_t>(w0.stride(0)),
                                        static_cast<int64_t>(w1.stride(0)), x.data(), ldx, l,
                                        out.data(), ldo, transpose, num_threads);
  }
  raise_on_status(status, dtype, "diff_matmul_cpu: bad arguments or no AVX-512 on this CPU");
}

using F64Matrix = nb::ndarray<double, nb::device::cpu, nb::ndim<2>>;

void gram_update(F64Matrix G, HostArray x, std::optional<HostArray> x0, int dtype, double alpha,
                 int num_threads) {
  check_bits_view(x, "x", dtype);
  if (x0) {
    check_bits_view(*x0, "x0", dtype);
    PG_CHECK(x0->shape(0) == x.shape(0) && x0->shape(1) == x.shape(1),
             "shape mismatch: x " + shape_str(x) + " vs x0 " + shape_str(*x0));
  }
  const int64_t r = static_cast<int64_t>(x.shape(0));
  const int64_t n = static_cast<int64_t>(x.shape(1));
  PG_CHECK(static_cast<int64_t>(G.shape(0)) == n && static_cast<int64_t>(G.shape(1)) == n,
           "G must be (" + std::to_string(n) + ", " + std::to_string(n) + ") for x " +
               shape_str(x) + ", got (" + std::to_string(G.shape(0)) + ", " +
               std::to_string(G.shape(1)) + ")");
  PG_CHECK(n <= 1 || G.stride(1) == 1, "G must have contiguous rows");
  const int64_t ldg = n > 1 ? static_cast<int64_t>(G.stride(0)) : n;
  int status;
  {
    nb::gil_scoped_release release;
    status = paramgeom::gram_update_cpu(
        x.data(), x0 ? x0->data() : nullptr, dtype, r, n, static_cast<int64_t>(x.stride(0)),
        x0 ? static_cast<int64_t>(x0->stride(0)) : 0, alpha, G.data(), ldg, num_threads);
  }
  raise_on_status(status, dtype, "gram_update_cpu: bad arguments or no AVX-512 on this CPU");
}
// A guarded, copy-on-write view of a file's bytes as a numpy uint8 array that owns the
// mapping (unmapped when the last view of it is freed); see io/guarded_map.h. Raises
// OSError with the errno when the range cannot be mapped (the caller then reads it).
nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>> map_file_range(int fd, uint64_t offset,
                                                             size_t length) {
  auto* m = new paramgeom::GuardedMapping();
  if (int err = paramgeom::guarded_map(fd, offset, length, m)) {
    delete m;
    errno = err;
    throw std::system_error(err, std::generic_category(), "guarded mapping failed");
  }
  nb::capsule owner(m, [](void* p) noexcept {
    auto* g = static_cast<paramgeom::GuardedMapping*>(p);
    paramgeom::guarded_unmap(g);
    delete g;
  });
  auto* data = static_cast<uint8_t*>(m->base) + m->delta;
  size_t shape[1] = {length};
  return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(data, 1, shape, owner);
}

// ---- The CUDA launch plans (paramgeom/launch_plan.h), for the cupy backend -------------
// The cupy backend launches the kernels of csrc/cuda compiled by NVRTC; it reads every
// launch decision from here so that it and the nvcc launchers follow one plan.

namespace plan = paramgeom::plan;

nb::dict diff_stats_plan(int64_t rows, int64_t cols, bool per_row, int dtype, bool cast_bf16,
                         int n_rel, int n_abs, int sm_count, bool scaled) {
  const int kid = plan::diff_stats_kernel_id(dtype, cast_bf16, n_rel, n_abs, scaled);
  PG_CHECK(kid >= 0, "diff_stats_plan: no kernel for dtype code " + std::to_string(dtype) +
                         " with " + std::to_string(n_rel) + " relative and " +
                         std::to_string(n_abs) + " absolute tolerances" +
                         (scaled ? " and block scales" : ""));
  PG_CHECK(rows >= 0 && cols >= 0 && (cols == 0 || rows <= (int64_t(1) << 62) / cols),
           "diff_stats_plan: bad shape (" + std::to_string(rows) + ", " +
               std::to_string(cols) + ")");
  const plan::DiffStatsLaunch l = plan::diff_stats_launch(rows, cols, per_row, sm_count);
  nb::dict d;
  d["kernel_id"] = kid;
  d["kernel"] = plan::kDiffStatsKernelNames[kid];
  d["final"] = plan::kDiffStatsFinal;
  d["fixup"] = plan::kDiffStatsFixup;
  d["threads"] = plan::kDiffStatsThreads;
  d["groups"] = l.groups;
  d["blocks"] = l.blocks;
  d["fixup_blocks"] = l.fixup_blocks;
  d["slots_offset"] = l.slots_offset;
  d["workspace_bytes"] = l.workspace_bytes;
  return d;
}

nb::bytes diff_stats_params(const std::vector<double>& rel_tols,
                            const std::vector<double>& abs_tols, bool cast_bf16,
                            int changed_index) {
  const paramgeom::DiffStatsParams p = make_params(rel_tols, abs_tols, cast_bf16, changed_index);
  return nb::bytes(reinterpret_cast<const char*>(&p), sizeof p);
}

// paramgeom::BlockScales as the bytes a kernel takes by value (device pointers as integers;
// 0: unscaled).
nb::bytes diff_stats_scales(uintptr_t scale0, uintptr_t scale1, int64_t stride0, int64_t stride1,
                            int64_t row0) {
  PG_CHECK((scale0 == 0) == (scale1 == 0), "diff_stats_scales: both scale grids or neither");
  PG_CHECK(stride0 >= 0 && stride1 >= 0 && row0 >= 0, "diff_stats_scales: negative stride or row");
  paramgeom::BlockScales s{};
  s.scale0 = reinterpret_cast<const float*>(scale0);
  s.scale1 = reinterpret_cast<const float*>(scale1);
  s.stride0 = stride0;
  s.stride1 = stride1;
  s.row0 = row0;
  return nb::bytes(reinterpret_cast<const char*>(&s), sizeof s);
}

std::vector<std::tuple<int, std::string>> diff_stats_kernels() {
  std::vector<std::tuple<int, std::string>> out;
  for (int id = 0; id < plan::kDiffStatsKernels; ++id)
    if (plan::kDiffStatsKernelNames[id]) out.emplace_back(id, plan::kDiffStatsKernelNames[id]);
  return out;
}

nb::dict linalg_plan_dict(int kid, const char* kernel, const char* final, int64_t P, int64_t Q,
                          int64_t R) {
  const plan::LinalgLaunch l = plan::linalg_launch(P, Q, R);
  PG_CHECK(l.fits, "linalg plan: a grid dimension exceeds CUDA's limits for P, Q, R = " +
                       std::to_string(P) + ", " + std::to_string(Q) + ", " + std::to_string(R));
  nb::dict d;
  d["kernel_id"] = kid;
  d["kernel"] = kernel;
  d["final"] = final;
  d["threads"] = paramgeom::linalg::kThreads;
  d["P"] = P;
  d["Q"] = Q;
  d["R"] = R;
  d["grid"] = std::make_tuple(l.split.tiles_p, l.split.tiles_q, l.split.splits);
  d["tiles_per_split"] = l.split.tiles_per_split;
  d["final_blocks"] = l.final_blocks;
  d["workspace_bytes"] = l.workspace_bytes;
  return d;
}

nb::dict diff_matmul_plan(int dtype, int64_t m, int64_t n, int64_t k, bool transpose) {
  const int kid = plan::diff_matmul_kernel_id(dtype, transpose);
  PG_CHECK(kid >= 0, "diff_matmul_plan: no kernel for dtype code " + std::to_string(dtype));
  PG_CHECK(m >= 0 && n >= 0 && k >= 0, "diff_matmul_plan: negative size");
  int64_t P, Q, R;
  plan::diff_matmul_dims(m, n, k, transpose, &P, &Q, &R);
  return linalg_plan_dict(kid, plan::kDiffMatmulKernelNames[kid], plan::kDiffMatmulFinal, P, Q,
                          R);
}

nb::dict gram_update_plan(int dtype, int64_t r, int64_t n) {
  const int kid = plan::gram_update_kernel_id(dtype);
  PG_CHECK(kid >= 0, "gram_update_plan: no kernel for dtype code " + std::to_string(dtype));
  PG_CHECK(r >= 0 && n >= 0, "gram_update_plan: negative size");
  int64_t P, Q, R;
  plan::gram_update_dims(r, n, &P, &Q, &R);
  return linalg_plan_dict(kid, plan::kGramUpdateKernelNames[kid], plan::kGramUpdateFinal, P, Q,
                          R);
}

// Every linear-algebra kernel as (op, kernel id, name, final kernel of its module).
std::vector<std::tuple<std::string, int, std::string, std::string>> linalg_kernels() {
  std::vector<std::tuple<std::string, int, std::string, std::string>> out;
  for (int id = 0; id < plan::kDiffMatmulKernels; ++id)
    out.emplace_back("diff_matmul", id, plan::kDiffMatmulKernelNames[id], plan::kDiffMatmulFinal);
  for (int id = 0; id < plan::kGramUpdateKernels; ++id)
    out.emplace_back("gram_update", id, plan::kGramUpdateKernelNames[id], plan::kGramUpdateFinal);
  return out;
}

void register_launch_plan(nb::module_& m) {
  m.def("diff_stats_plan", &diff_stats_plan, "rows"_a, "cols"_a, "per_row"_a, nb::kw_only(),
        "dtype"_a, "cast_bf16"_a, "n_rel"_a, "n_abs"_a, "sm_count"_a, "scaled"_a = false,
        "The launches of one CUDA diff_stats call: kernel id and names, blocks, threads, "
        "workspace bytes and layout (paramgeom/launch_plan.h).");
  m.def("diff_stats_params", &diff_stats_params, "rel_tols"_a, "abs_tols"_a, nb::kw_only(),
        "cast_bf16"_a, "changed_index"_a,
        "paramgeom::DiffStatsParams as the bytes a kernel takes by value.");
  m.def("diff_stats_scales", &diff_stats_scales, "scale0"_a, "scale1"_a, "stride0"_a,
        "stride1"_a, "row0"_a, "paramgeom::BlockScales as the bytes a kernel takes by value.");
  m.def("diff_stats_kernels", &diff_stats_kernels,
        "Every diff_stats main-pass kernel as (kernel id, name).");
  m.def("diff_matmul_plan", &diff_matmul_plan, "dtype"_a, "m"_a, "n"_a, "k"_a, "transpose"_a,
        "The launches of one CUDA diff_matmul call (paramgeom/launch_plan.h).");
  m.def("gram_update_plan", &gram_update_plan, "dtype"_a, "r"_a, "n"_a,
        "The launches of one CUDA gram_update call (paramgeom/launch_plan.h).");
  m.def("linalg_kernels", &linalg_kernels,
        "Every diff_matmul / gram_update kernel as (op, kernel id, name, final kernel).");
}
}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "paramgeom CPU kernels (C++17, OpenMP)";
  m.attr("MAX_TOLS") = static_cast<int>(paramgeom::kMaxTols);
  m.attr("NUM_COUNTS") = static_cast<int>(paramgeom::kNumCounts);
  m.attr("NUM_SUMS") = static_cast<int>(paramgeom::kNumSums);
  m.attr("GROUP_ELEMS") = static_cast<int64_t>(paramgeom::kGroupElems);
  m.attr("REL0") = static_cast<int>(paramgeom::kRel0);
  m.attr("ABS0") = static_cast<int>(paramgeom::kAbs0);
  m.attr("EQUAL") = static_cast<int>(paramgeom::kEqual);
  m.def("best_isa", &paramgeom::diff_stats_cpu_best_isa,
        "Instruction set the CPU kernels use on this machine (avx512, avx2 or generic).");
  m.def("max_threads", &omp_get_max_threads, "OpenMP's default thread count.");
  m.def("diff_stats", &diff_stats, "w0"_a, "w1"_a, nb::kw_only(), "dtype"_a, "rel_tols"_a,
        "abs_tols"_a, "cast_bf16"_a, "changed_index"_a, "counts"_a, "sums"_a,
        "row_changed"_a = nb::none(), "row_sq_delta"_a = nb::none(), "num_threads"_a = 0,
        "isa"_a = "", "scale0"_a = nb::none(), "scale1"_a = nb::none(), "scale_row0"_a = 0,
        "Fused diff statistics of two 2-D bit views (see paramgeom/diff_stats.h). Writes "
        "totals into counts/sums and, when given, per-row outputs.");
  m.def("diff_matmul_supported", &paramgeom::diff_matmul_cpu_supported,
        "Whether this CPU runs the fused diff_matmul kernel (AVX-512 F/BW/DQ/VL).");
  m.def("diff_matmul", &diff_matmul, "w0"_a, "w1"_a, nb::kw_only(), "dtype"_a, "x"_a, "out"_a,
        "transpose"_a, "num_threads"_a = 0,
        "out = (w1 - w0) @ x, or (w1 - w0)^T @ x, for two 2-D bit views, the difference "
        "formed in fp32 one cache-sized tile at a time (csrc/cpu/diff_matmul_cpu.h).");
  m.def(
      "fma_peak_gflops",
      [](int64_t iterations, int num_threads) {
        nb::gil_scoped_release release;
        return paramgeom::fma_peak_gflops(iterations, num_threads);
      },
      "iterations"_a, "num_threads"_a = 0,
      "Measured fp32 FMA throughput (GFLOP/s, all threads, registers only); 0 without "
      "AVX-512.");
  m.def("gram_update_supported", &paramgeom::gram_update_cpu_supported,
        "Whether this CPU runs the float64 gram_update kernel (AVX-512 F/BW/DQ/VL).");
  m.def("gram_update", &gram_update, "G"_a, "x"_a, "x0"_a.none(), nb::kw_only(), "dtype"_a,
        "alpha"_a, "num_threads"_a = 0,
        "G += alpha (x - x0)^T (x - x0) in float64 for 2-D bit views (x0 None: zero); see "
        "csrc/cpu/gram_update_cpu.h.");
  m.def("diff_tile", &diff_tile, "w0"_a, "w1"_a, nb::kw_only(), "dtype"_a, "out"_a,
        "num_threads"_a = 0,
        "out = fp32(w1) - fp32(w0) for two 2-D bit views: exact widening, one fp32 "
        "subtraction, one pass (the tile diff_matmul hands to a GEMM).");
  m.def("map_file_range", &map_file_range, "fd"_a, "offset"_a, "length"_a,
        "Bytes [offset, offset + length) of file descriptor fd as a copy-on-write uint8 "
        "array whose pages, should the file shrink under them, read as zeros and are "
        "counted (mapped_fault_count) instead of killing the process with SIGBUS.");
  m.def("mapped_fault_count", &paramgeom::guarded_fault_count,
        "Faults in guarded mappings turned into zero pages since the process started.");
  m.def("mapped_live_count", &paramgeom::guarded_live_count,
        "Guarded mappings alive now.");
  register_launch_plan(m);
}
