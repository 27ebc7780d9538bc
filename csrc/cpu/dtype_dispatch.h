// The storage dtype code a CPU kernel is given, turned into the compile-time constant its
// templates take: f(std::integral_constant<int, kDType>{}) for each format, kBadDType for
// an unknown code. One switch for every CPU kernel.
#pragma once

#include <type_traits>

#include "paramgeom/common.h"

namespace paramgeom {

template <class F>
int with_storage_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: return f(std::integral_constant<int, kFloat32>{});
    case kBFloat16: return f(std::integral_constant<int, kBFloat16>{});
    case kFloat16: return f(std::integral_constant<int, kFloat16>{});
    case kFloat8E4M3: return f(std::integral_constant<int, kFloat8E4M3>{});
    case kFloat8E5M2: return f(std::integral_constant<int, kFloat8E5M2>{});
    default: return kBadDType;
  }
}

}  // namespace paramgeom
