"""What every op's API takes as a tensor: a plain dense tensor with data.

The kernels read memory through ``data_ptr()`` (the C++ ones through DLPack). A tensor
subclass (``DTensor``, ``FakeTensor``, a quantised or wrapper subclass), a tensor on the
``meta`` device or a sparse one has no such memory, or memory that is not what its shape
says (a DTensor's is its local shard): handed to a C++ kernel it reads garbage or crashes
the process. Each API calls :func:`check_tensor` on every tensor argument first, so these
are one clear ``TypeError`` naming the argument.
"""

from __future__ import annotations

import torch

__all__ = ["check_tensor"]

# torch.nn.Parameter is the one subclass allowed: it is a plain tensor with a flag.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def check_tensor(name: str, t: object) -> torch.Tensor:
    """``t`` itself when it is a dense, strided tensor with storage; else ``TypeError``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    kind = type(t)
    if kind not in _PLAIN:
        hint = ""
        if kind.__name__ == "DTensor":
            hint = (
                ": pass its local shard (.to_local()) or the whole matrix (.full_tensor()); "
                "the monitor does not read sharded weights yet"
            )
        raise TypeError(
            f"{name} is a {kind.__module__}.{kind.__name__}, a tensor subclass: paramgeom's "
            f"kernels take plain dense tensors{hint}"
        )
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}: pass a dense (strided) tensor")
    if t.device.type == "meta":
        raise TypeError(f"{name} is on the meta device: it holds no data to read")
    return t
