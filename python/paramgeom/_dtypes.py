"""Storage dtypes the kernels read, and the integer views that carry their bits.

The codes are ``paramgeom._contract``'s (rendered into ``paramgeom::DType`` for the
kernels). Tensors cross into every compiled backend as same-size integer views
(``Tensor.view(int_dtype)``, no copy), so no binding depends on DLPack knowing bf16 or fp8,
and every backend decodes the bits with the same arithmetic.
"""

from __future__ import annotations

import torch

from paramgeom._contract import BFLOAT16, FLOAT8_E4M3, FLOAT8_E5M2, FLOAT16, FLOAT32

__all__ = [
    "BFLOAT16",
    "FLOAT8_E4M3",
    "FLOAT8_E5M2",
    "FLOAT16",
    "FLOAT32",
    "SUPPORTED",
    "bits_view",
    "dtype_code",
]

_CODES: dict[torch.dtype, int] = {
    torch.float32: FLOAT32,
    torch.bfloat16: BFLOAT16,
    torch.float16: FLOAT16,
}
for _name, _code in (("float8_e4m3fn", FLOAT8_E4M3), ("float8_e5m2", FLOAT8_E5M2)):
    if hasattr(torch, _name):
        _CODES[getattr(torch, _name)] = _code

_BITS_VIEW = {4: torch.int32, 2: torch.int16, 1: torch.uint8}

SUPPORTED = tuple(_CODES)


def dtype_code(dtype: torch.dtype) -> int:
    """The kernel dtype code of a torch dtype; ``TypeError`` for anything unsupported."""
    try:
        return _CODES[dtype]
    except KeyError:
        names = ", ".join(str(d).replace("torch.", "") for d in SUPPORTED)
        raise TypeError(f"unsupported dtype {dtype}: paramgeom kernels read {names}") from None


def bits_view(t: torch.Tensor) -> torch.Tensor:
    """The same storage seen as integers of the same width (no copy, strides kept)."""
    return t.view(_BITS_VIEW[t.element_size()])
