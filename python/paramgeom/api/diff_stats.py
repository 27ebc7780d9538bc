"""``paramgeom.diff_stats``: the fused unchanged-parameter statistics of two tensors."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from paramgeom import _contract, _dtypes
from paramgeom._backends import resolve
from paramgeom._backends.job import DiffStatsJob, DiffStatsRaw
from paramgeom.api._tensors import check_tensor
from paramgeom.checkpoints.fp8 import check_scales
from paramgeom.results import DiffStats

__all__ = ["diff_stats"]

CASTS = (None, "bf16")


def _check_tols(tols: Sequence[float], name: str) -> tuple[float, ...]:
    if type(tols) is tuple:  # the common case, checked once per distinct value
        try:
            # repr in the key: -0.0 == 0.0 (one hash), but each is echoed as given
            return _checked_tuple(tols, name, repr(tols))
        except TypeError:  # unhashable items: checked below, uncached
            pass
    return _check_tols_now(tols, name)


@functools.lru_cache(maxsize=64)
def _checked_tuple(tols: tuple, name: str, spelled: str) -> tuple[float, ...]:
    return _check_tols_now(tols, name)


def _check_tols_now(tols: Sequence[float], name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(t) for t in tols)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of floats, got {tols!r}") from None
    if len(out) > _contract.MAX_TOLS:
        raise ValueError(f"{name}: at most {_contract.MAX_TOLS} tolerances, got {len(out)}")
    bad = [t for t in out if not (math.isfinite(t) and t >= 0.0)]
    if bad:
        raise ValueError(f"{name} must be finite and >= 0, got {bad}")
    return out


def _check_pair(w0: torch.Tensor, w1: torch.Tensor) -> None:
    check_tensor("w0", w0)
    check_tensor("w1", w1)
    if w0.shape != w1.shape:
        raise ValueError(
            f"shape mismatch: w0 has shape {tuple(w0.shape)}, w1 has shape {tuple(w1.shape)}"
        )
    if w0.dtype != w1.dtype:
        raise TypeError(
            f"dtype mismatch: w0 is {w0.dtype}, w1 is {w1.dtype}; convert one explicitly "
            "(e.g. an fp32 base to the tuned dtype) or pass cast='bf16' after converting both"
        )
    _dtypes.dtype_code(w0.dtype)  # TypeError naming the dtype when unsupported
    if w0.device != w1.device:
        raise ValueError(f"device mismatch: w0 is on {w0.device}, w1 is on {w1.device}")


def _rows_view(t: torch.Tensor, flat: bool) -> torch.Tensor:
    """A 2-D (rows, cols) view with contiguous rows, copying only when no view exists.

    ``flat`` (contiguous input, no per-row outputs) gives one long row; otherwise rows are
    all dims but the last, flattened (a 0-d tensor is one row of one element).
    """
    if t.dim() == 0:
        t = t.reshape(1, 1)
    if flat:
        return t.view(1, t.numel())
    cols = t.shape[-1]
    rows = math.prod(t.shape[:-1])
    if t.stride(-1) == 1 or cols <= 1:
        try:
            return t.view(rows, cols)
        except RuntimeError:
            pass  # leading dims do not merge into one stride: fall through to a copy
    return t.contiguous().view(rows, cols)


def _rows_views(
    w0: torch.Tensor, w1: torch.Tensor, per_row: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as 2-D views of one logical shape (their row strides may differ)."""
    flat = not per_row and w0.is_contiguous() and w1.is_contiguous()
    return _rows_view(w0, flat), _rows_view(w1, flat)


def make_job(
    w0: torch.Tensor,
    w1: torch.Tensor,
    rel: tuple[float, ...],
    abs_: tuple[float, ...],
    cast: str | None,
    per_row: bool,
) -> DiffStatsJob:
    """What every backend is handed for checked inputs: 2-D row views as integer bit views,
    the dtype code, the tolerances, and whether to round to bf16 (a no-op for bf16)."""
    v0, v1 = _rows_views(w0, w1, per_row)
    return DiffStatsJob(
        w0=_dtypes.bits_view(v0),
        w1=_dtypes.bits_view(v1),
        dtype_code=_dtypes.dtype_code(w0.dtype),
        rel_tols=rel,
        abs_tols=abs_,
        cast_bf16=cast == "bf16" and w0.dtype != torch.bfloat16,
        per_row=per_row,
    )


def make_scaled_job(
    w0: torch.Tensor,
    w1: torch.Tensor,
    scale_inv: tuple[torch.Tensor, torch.Tensor],
    scale_row0: int,
    rel: tuple[float, ...],
    abs_: tuple[float, ...],
    per_row: bool,
) -> DiffStatsJob:
    """The job of a block-scaled fp8 pair: the weight's rows as the view (scales are
    indexed by row and column), each grid float32 with contiguous rows on the inputs'
    device; ``ValueError`` naming what does not fit."""
    if not isinstance(scale_inv, (tuple, list)) or len(scale_inv) != 2:
        raise TypeError("scale_inv must be a pair (scale of w0, scale of w1)")
    if w0.dim() != 2:
        raise ValueError(f"scale_inv needs 2-D fp8 weights, got shape {tuple(w0.shape)}")
    if isinstance(scale_row0, bool) or not isinstance(scale_row0, int):
        raise TypeError(f"scale_row0 must be an int, got {type(scale_row0).__name__}")
    grids = []
    for name, w, s in (("w0", w0, scale_inv[0]), ("w1", w1, scale_inv[1])):
        check_tensor(f"scale_inv of {name}", s)
        check_scales(w, s, _contract.SCALE_BLOCK, scale_row0, f"diff_stats: scale_inv of {name}")
        grid = s.to(device=w.device, dtype=torch.float32)
        grids.append(grid if grid.stride(-1) == 1 or grid.shape[-1] <= 1 else grid.contiguous())
    v0, v1 = _rows_view(w0, flat=False), _rows_view(w1, flat=False)
    return DiffStatsJob(
        w0=_dtypes.bits_view(v0),
        w1=_dtypes.bits_view(v1),
        dtype_code=_dtypes.dtype_code(w0.dtype),
        rel_tols=rel,
        abs_tols=abs_,
        cast_bf16=False,
        per_row=per_row,
        scale0=grids[0],
        scale1=grids[1],
        scale_row0=scale_row0,
    )


def _result(raw: DiffStatsRaw, job: DiffStatsJob, backend: str, row_shape) -> DiffStats:
    c = raw.counts.tolist()
    s = raw.sums.tolist()
    nrel, nabs = len(job.rel_tols), len(job.abs_tols)
    return DiffStats(
        numel=c[_contract.COUNT],
        n_equal=c[_contract.EQUAL],
        rel_tols=job.rel_tols,
        n_within_rel=tuple(c[_contract.REL0 : _contract.REL0 + nrel]),
        abs_tols=job.abs_tols,
        n_within_abs=tuple(c[_contract.ABS0 : _contract.ABS0 + nabs]),
        sum_sq_delta=s[_contract.SUM_SQ_DELTA],
        sum_sq_w0=s[_contract.SUM_SQ_W0],
        sum_sq_w1=s[_contract.SUM_SQ_W1],
        sum_w0w1=s[_contract.SUM_W0W1],
        max_abs_delta=s[_contract.MAX_ABS_DELTA],
        n_nonfinite_w0=c[_contract.NONFINITE0],
        n_nonfinite_w1=c[_contract.NONFINITE1],
        backend=backend,
        row_changed=None if raw.row_changed is None else raw.row_changed.reshape(row_shape),
        row_sq_delta=None if raw.row_sq_delta is None else raw.row_sq_delta.reshape(row_shape),
    )


def diff_stats(
    w0: torch.Tensor,
    w1: torch.Tensor,
    rel_tols: Sequence[float] = (1e-3,),
    abs_tols: Sequence[float] = (),
    cast: str | None = None,
    per_row: bool = False,
    backend: str = "auto",
    scale_inv: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale_row0: int = 0,
) -> DiffStats:
    """Fused difference statistics of a base tensor ``w0`` and a tuned tensor ``w1``.

    One pass reads each input byte once and returns a :class:`~paramgeom.DiffStats`:
    element count; the count numerically equal in the storage dtype (+0 == -0, NaN never
    equal); for each relative tolerance eta the count of finite pairs with
    ``|w1 - w0| <= eta * max(|w0|, |w1|)``, the paper's unchanged rule (arXiv 2606.07082,
    eta = 1e-3 on bf16 weights); for each absolute tolerance the count with
    ``|w1 - w0| <= tol``; sum (w1-w0)^2, sum w0^2, sum w1^2, sum w0*w1 and max |w1-w0|
    over finite pairs; the non-finite count of each input. All arithmetic is float64 on
    exactly decoded values; totals are bit-identical across runs and thread counts for a
    given backend, shape and device.

    Parameters
    ----------
    w0, w1 : torch.Tensor
        Same shape, same dtype (bfloat16, float16, float32, float8_e4m3fn, float8_e5m2),
        same device; any shape (0-d and empty included) and any strides.
    rel_tols, abs_tols : sequence of float
        Up to 8 of each, finite and >= 0.
    cast : {None, "bf16"}
        ``"bf16"`` rounds both inputs to bfloat16 (round-to-nearest-even) first, as the
        paper compares checkpoints; a no-op on bf16 inputs.
    per_row : bool
        Also return, per row (``w0.shape[:-1]``), the changed count under ``rel_tols[0]``
        (under equality when ``rel_tols`` is empty) and the squared-delta sum.
    backend : {"auto", "cuda", "cupy", "triton", "cpu", "torch"}
        ``auto`` takes cuda > cupy > triton for CUDA tensors, cpu > torch for CPU ones.
    scale_inv : (torch.Tensor, torch.Tensor), optional
        Block scales of fp8 ``w0`` and ``w1`` (DeepSeek-V3 layout: float grids of shape
        ``(ceil(m / 128), ceil(n / 128))`` for ``(m, n)`` weights). The kernels then read
        the stored fp8 bytes and compare ``float32(q) * scale`` rounded to bf16, the
        dequantised weights as the paper compares checkpoints, in the same single pass
        (no dequantised copy). Only for 2-D fp8 inputs; ``cast`` is implied.
    scale_row0 : int
        With ``scale_inv``: the weight row that row 0 of ``w0`` / ``w1`` is (they may be a
        row block of the weight, read block by block).

    Notes
    -----
    For bf16 inputs and eta < 2^-8 the relative rule equals equality on finite values:
    distinct bf16 values differ by at least 2^-8 of the larger (exactly 2^-8 only for a
    power of two and its predecessor, so eta = 2^-8 itself is *not* equality). The
    paper's 1e-3 rule on bf16 is therefore a bit compare, and the CPU kernel runs it as one.
    """
    _check_pair(w0, w1)
    rel = _check_tols(rel_tols, "rel_tols")
    abs_ = _check_tols(abs_tols, "abs_tols")
    if cast not in CASTS:
        raise ValueError(f"cast must be None or 'bf16', got {cast!r}")
    name, impl = resolve(backend, w0.device, op="diff_stats")
    row_shape = tuple(w0.shape[:-1])
    if scale_inv is None:
        job = make_job(w0, w1, rel, abs_, cast, per_row)
    else:
        job = make_scaled_job(w0, w1, scale_inv, scale_row0, rel, abs_, per_row)
    return _result(impl(job), job, name, row_shape)
