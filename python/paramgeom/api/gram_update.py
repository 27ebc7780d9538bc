"""``paramgeom.gram_update``: accumulate the Gram matrix of a difference, row block by block."""

from __future__ import annotations

import math

import torch

from paramgeom._backends import resolve
from paramgeom.api._tensors import check_tensor
from paramgeom.api.diff_matmul import row_major

__all__ = ["gram_update"]

INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _accumulator_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """``G`` dtypes per device: float64 on the CPU; float32 (or float64) on a GPU."""
    return (torch.float64,) if device.type == "cpu" else (torch.float32, torch.float64)


def _check(G: torch.Tensor, x: torch.Tensor, x0: torch.Tensor | None, alpha: float) -> float:
    for name, t in (("G", G), ("x", x), ("x0", x0)):
        if name == "x0" and t is None:
            continue
        check_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x0 is not None:
        if x0.shape != x.shape:
            raise ValueError(
                f"shape mismatch: x has shape {tuple(x.shape)}, x0 has shape {tuple(x0.shape)}"
            )
        if x0.dtype != x.dtype:
            raise TypeError(f"dtype mismatch: x is {x.dtype}, x0 is {x0.dtype}")
        if x0.device != x.device:
            raise ValueError(f"device mismatch: x is on {x.device}, x0 is on {x0.device}")
    n = x.shape[1]
    if tuple(G.shape) != (n, n):
        raise ValueError(
            f"G must have shape {(n, n)} for x of shape {tuple(x.shape)}, got {tuple(G.shape)}"
        )
    if G.device != x.device:
        raise ValueError(f"device mismatch: x is on {x.device}, G is on {G.device}")
    allowed = _accumulator_dtypes(G.device)
    if G.dtype not in allowed:
        names = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"G on {G.device.type} must be {names}, got {G.dtype}")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a real number, got {alpha!r}") from None
    if not math.isfinite(a):
        raise ValueError(f"alpha must be finite, got {a}")
    return a


def gram_update(
    G: torch.Tensor,
    x: torch.Tensor,
    x0: torch.Tensor | None = None,
    alpha: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Streaming Gram update, in place: ``G += alpha * (x - x0)^T (x - x0)``.

    DESIGN.md, kernel contract 2. The subtraction is fused (the difference ``x - x0`` is
    formed in fp32 per tile, exactly for bf16/fp16 inputs, and never stored at full
    size); products accumulate in float64 on the CPU and in float32 per call on a GPU.
    Row blocks of one matrix may arrive one call at a time (tensor-parallel shards,
    chunked giant embeddings): since ``D^T D = sum_b D_b^T D_b`` over any partition of the
    rows into blocks ``D_b``, the accumulated ``G`` equals the Gram of the whole, in any
    order of the blocks. Reference: :func:`paramgeom.reference.gram_update_ref`.

    Parameters
    ----------
    G : torch.Tensor, shape (n, n)
        The accumulator, updated in place: float64 on the CPU; float32 or float64 on a
        GPU. Any strides (a non-contiguous ``G`` is updated through a contiguous copy).
    x : torch.Tensor, shape (r, n)
        A block of ``r`` rows: bfloat16, float16 or float32, any strides.
    x0 : torch.Tensor, optional
        Same shape, dtype and device as ``x``; ``None`` means zero (the Gram of ``x``).
    alpha : float
        Finite scale of the update.
    backend : {"auto", "cuda", "cupy", "triton", "cpu", "torch"}
        ``auto`` takes the first usable backend implementing the op, in the order
        cuda > cupy > triton for CUDA tensors and cpu > torch for CPU ones.

    Returns
    -------
    torch.Tensor
        ``G`` itself. With ``r == 0`` or ``n == 0`` it is left unchanged.

    Raises
    ------
    TypeError
        A non-tensor argument, an unsupported dtype of ``x`` or ``G``, mismatched dtypes,
        or a non-numeric ``alpha``.
    ValueError
        Non-2-D inputs, a ``G`` that is not ``(n, n)``, mismatched shapes or devices, a
        non-finite ``alpha``, or an unknown backend.
    """
    a = _check(G, x, x0, alpha)
    _, impl = resolve(backend, x.device, op="gram_update")
    if x.shape[0] == 0 or x.shape[1] == 0:
        return G
    xv = row_major(x)
    xv = xv if xv is not None else x.contiguous()
    x0v = None
    if x0 is not None:
        x0v = row_major(x0)
        x0v = x0v if x0v is not None else x0.contiguous()
    target = G if G.is_contiguous() else G.contiguous()
    impl(target, xv, x0v, a)
    if target is not G:
        G.copy_(target)
    return G
