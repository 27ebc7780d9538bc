"""DeepSeek-style FP8 weights with 128x128 block scales (DESIGN.md "Checkpoints").

Convention (DeepSeek-V3): a weight ``X.weight`` stored as ``float8_e4m3fn`` (or
``float8_e5m2``) of shape ``(m, n)`` comes with ``X.weight_scale_inv``, float32 of shape
``(ceil(m / 128), ceil(n / 128))``, and the value it stands for is::

    w[i, j] = float(q[i, j]) * scale_inv[i // 128, j // 128]

Stacks of matrices (fused experts ``[E, m, n]``) carry one scale grid per matrix:
``scale_inv`` of shape ``[E, ceil(m / 128), ceil(n / 128)]``; the block grid covers the
last two dimensions.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "FP8_DTYPES",
    "SCALE_SUFFIX",
    "check_scales",
    "dequantize_blocks",
    "fp8_max",
    "is_fp8",
    "is_scale_name",
    "quantize_blocks",
    "scale_name",
    "scale_shape",
    "weight_name",
]

SCALE_SUFFIX = "_scale_inv"

FP8_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, n)
    for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if hasattr(torch, n)
)


def is_fp8(dtype: torch.dtype) -> bool:
    """True for the float8 storage dtypes."""
    return dtype in FP8_DTYPES


def fp8_max(fmt: torch.dtype) -> float:
    """Largest finite value of a float8 format (448 for e4m3fn, 57344 for e5m2)."""
    if not is_fp8(fmt):
        raise ValueError(f"not a float8 dtype: {fmt}")
    return float(torch.finfo(fmt).max)


def scale_name(weight_name: str) -> str:
    """Name of the block-scale tensor of a weight: ``a.weight`` -> ``a.weight_scale_inv``.

    Names without ``.weight`` (fused expert stacks such as ``...experts.down_proj``) get the
    same suffix: ``...experts.down_proj_scale_inv``.
    """
    return weight_name + SCALE_SUFFIX


def is_scale_name(name: str) -> bool:
    """True for block-scale tensor names (``..._scale_inv``)."""
    return name.endswith(SCALE_SUFFIX)


def weight_name(scale: str) -> str:
    """Inverse of :func:`scale_name`."""
    if not is_scale_name(scale):
        raise ValueError(f"not a scale name: {scale!r}")
    return scale[: -len(SCALE_SUFFIX)]


def scale_shape(shape: tuple[int, ...] | torch.Size, block: int = 128) -> tuple[int, ...]:
    """Shape of the block-scale grid of a weight of ``shape`` (>= 2-D; grid on the last two)."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"block scales need a matrix (>= 2-D), got shape {shape}")
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    return (*shape[:-2], math.ceil(shape[-2] / block), math.ceil(shape[-1] / block))


def check_scales(
    q: torch.Tensor, scale_inv: torch.Tensor, block: int, row_start: int, what: str
) -> None:
    """``ValueError`` (prefixed ``what``) unless ``scale_inv`` is a float grid that covers fp8
    ``q`` (a row slice of the weight starting at global row ``row_start``) in ``block``
    blocks: the rule every reader of block-scaled weights (host dequantisation, the
    kernels' scaled read) checks."""
    if not is_fp8(q.dtype):
        raise ValueError(f"{what}: q must be a float8 tensor, got {q.dtype}")
    if not scale_inv.is_floating_point() or is_fp8(scale_inv.dtype):
        raise ValueError(f"{what}: scale_inv must be a float32-like tensor, got {scale_inv.dtype}")
    if block <= 0:
        raise ValueError(f"{what}: block must be positive, got {block}")
    if row_start < 0:
        raise ValueError(f"{what}: row_start must be >= 0, got {row_start}")
    if q.dim() < 2:
        raise ValueError(f"{what}: q must be at least 2-D, got shape {tuple(q.shape)}")
    if scale_inv.dim() != q.dim():
        raise ValueError(
            f"{what}: scale_inv must have {q.dim()} dims like q, "
            f"got shape {tuple(scale_inv.shape)} for q {tuple(q.shape)}"
        )
    m, n = q.shape[-2], q.shape[-1]
    nb = math.ceil(n / block)
    if tuple(scale_inv.shape[:-2]) != tuple(q.shape[:-2]) or scale_inv.shape[-1] != nb:
        raise ValueError(
            f"{what}: scale_inv shape {tuple(scale_inv.shape)} does not match q "
            f"{tuple(q.shape)} with block {block} (expected (..., rows, {nb}))"
        )
    last_block = (row_start + m - 1) // block if m else row_start // block
    if m and last_block >= scale_inv.shape[-2]:
        raise ValueError(
            f"{what}: rows [{row_start}, {row_start + m}) need scale rows up to "
            f"{last_block}, scale_inv has {scale_inv.shape[-2]}"
        )


def dequantize_blocks(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: int = 128,
    row_start: int = 0,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantise FP8 ``q`` with per-block ``scale_inv``: ``w = float(q) * scale_inv[block]``.

    ``q`` is ``(m, n)`` or a stack ``(..., m, n)``; it may be a row slice of the full matrix
    starting at global row ``row_start`` (row-block streaming): local row ``r`` uses scale
    row ``(row_start + r) // block`` of ``scale_inv``, which is the full matrix's grid
    ``(..., ceil(M / block), ceil(n / block))`` (or any grid whose rows cover the slice).

    The product is formed in float32 (float64 when ``out_dtype`` is float64; then it is
    exact) and rounded once to ``out_dtype``.
    """
    check_scales(q, scale_inv, block, row_start, "dequantize_blocks")
    m, n = q.shape[-2], q.shape[-1]
    nb = math.ceil(n / block)
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    out = q.to(work)
    if out.numel() == 0:
        return out.to(out_dtype)
    rows = torch.arange(row_start, row_start + m, device=q.device) // block
    s = scale_inv.to(device=q.device, dtype=work).index_select(-2, rows)  # (..., m, nb)
    full = (n // block) * block
    if full:
        out[..., :full].view(*out.shape[:-1], n // block, block).mul_(
            s[..., : n // block].unsqueeze(-1)
        )
    if full < n:
        out[..., full:].mul_(s[..., nb - 1 : nb])
    return out if out_dtype == work else out.to(out_dtype)


def quantize_blocks(
    w: torch.Tensor, fmt: torch.dtype = torch.float8_e4m3fn, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise ``w`` (``(m, n)`` or ``(..., m, n)``) to FP8 with per-block scales.

    Each ``block x block`` tile (ragged at the edges) is scaled so its largest magnitude maps
    to the format's largest finite value (448 for e4m3fn, 57344 for e5m2):
    ``scale_inv = amax / fmax``; an all-zero tile gets ``scale_inv = 1``. Returns
    ``(q, scale_inv)`` with ``scale_inv`` float32 of :func:`scale_shape`. The division is
    done in float32 and rounded to nearest by the cast.
    """
    fmax = fp8_max(fmt)
    if w.dim() < 2:
        raise ValueError(f"quantize_blocks: w must be at least 2-D, got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"quantize_blocks: w must be floating point, got {w.dtype}")
    if block <= 0:
        raise ValueError(f"quantize_blocks: block must be positive, got {block}")
    x = w.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("quantize_blocks: w has non-finite values")
    *lead, m, n = x.shape
    mb, nb = math.ceil(m / block), math.ceil(n / block)
    pad = torch.nn.functional.pad(x.abs(), (0, nb * block - n, 0, mb * block - m))
    amax = pad.view(*lead, mb, block, nb, block).amax(dim=(-3, -1))  # (..., mb, nb)
    scale_inv = torch.where(amax > 0, amax / fmax, torch.ones_like(amax))
    del pad
    expand = scale_inv.repeat_interleave(block, dim=-2)[..., :m, :]
    expand = expand.repeat_interleave(block, dim=-1)[..., :n]
    q = (x / expand).clamp_(-fmax, fmax).to(fmt)
    return q, scale_inv.contiguous()
