// Argument checks and the device guard shared by the _C_cuda binding files
// (bindings_cuda.cu, bindings_linalg.cu): each raises ValueError naming the argument.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "paramgeom/common.h"

namespace paramgeom::bindings {

namespace nb = nanobind;

inline void require(bool ok, const std::string& message) {
  if (!ok) throw nb::value_error(message.c_str());
}

inline bool is_cuda(int device_type) { return device_type == nb::device::cuda::value; }

// On a CUDA device, and on `device` unless it is negative.
template <class A>
void check_device(const A& a, const std::string& name, int device) {
  require(is_cuda(a.device_type()), name + ": expected a CUDA array");
  require(device < 0 || a.device_id() == device,
          name + ": on another device than the first input");
}

// A 2-D integer bit view of a stored matrix of `dtype` (python/paramgeom/_dtypes.py),
// columns contiguous.
template <class A>
void check_bits_view(const A& a, const std::string& name, int dtype, int device) {
  check_device(a, name, device);
  require(a.ndim() == 2, name + ": expected a 2-D (rows, cols) view");
  const auto code = a.dtype().code;
  const size_t width = static_cast<size_t>(dtype_size(dtype));
  require((code == uint8_t(nb::dlpack::dtype_code::Int) ||
           code == uint8_t(nb::dlpack::dtype_code::UInt)) &&
              a.itemsize() == width && a.dtype().lanes == 1,
          name + ": expected an integer bit view of " + std::to_string(width) +
              "-byte elements for dtype code " + std::to_string(dtype));
  require(a.shape(1) <= 1 || a.stride(1) == 1, name + ": columns must be contiguous");
  require(a.shape(0) <= 1 || a.stride(0) >= 0, name + ": negative row stride");
}

// Makes `device` current for a launch and restores the caller's current device after it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_)
      cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace paramgeom::bindings
