"""Fused difference statistics of two same-shape tensors in one pass (DESIGN.md, kernel 1).

Per element, with a = w0 and b = w1 decoded exactly from their storage bits to fp32 (and,
with ``cast_bf16``, rounded to bf16 with round-to-nearest-even), then widened to fp64:

    equal        a == b                          (+0 == -0, NaN never equal, Inf == Inf)
    finite pair  |a| < Inf and |b| < Inf
    rel_i        finite pair and |b - a| <= eta_i * max(|a|, |b|)     (the paper's rule)
    abs_i        finite pair and |b - a| <= tol_i
    sums         sum (b - a)^2, sum a^2, sum b^2, sum a*b, max |b - a|   over finite pairs
    non-finite   count of non-finite a, and of non-finite b

With block scales (block-scaled fp8, ``paramgeom/diff_stats.h``, BlockScales), a and b are
instead ``round_to_bf16(decode(q) * scale)`` with the fp32 scale of the element's 128x128
block (``scale[(scale_row0 + row) // 128][col // 128]``, one fp32 rounding of the product):
the dequantised weights as the host path forms them, read from the stored bytes.

and per row (optional): changed = cols - #unchanged, with unchanged = rel_0 when a
relative tolerance is given and equal otherwise, and sum (b - a)^2 over the row's finite
pairs. ``csrc/include/paramgeom/diff_stats.h`` states the same rule for the C++/CUDA
kernels; ``paramgeom.reference.diff_stats_terms_ref`` (float64 torch) defines it.

Organisation: the inputs are a 2-D view ``(rows, cols)`` with unit inner stride and
per-input row strides. A contiguous input (without per-row outputs) is walked as
``numel // W`` full rows of width ``W`` plus a second launch for the short tail, so a
single long row spreads over many programs and no flat-index mask breaks vector loads.
The grid is (row programs, column programs) from ``_utils.plan_2d``; each program walks
``BLOCK_R x BLOCK_C`` tiles of its share (rows outer, columns inner), accumulating every
count in int32 lanes and every sum in fp64 lanes (no fp32 stage: the results must match
the fp64 oracle to 1e-12), and writes one partial (counts, sums, per-row pieces) at the
end. The partials are reduced afterwards in launch and program order with torch; no
float atomics, so the bits depend on the shape alone.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import _contract
from ._utils import FLAT_WIDTH, plan_2d

# Dtype codes and the output layout: paramgeom._contract, their one definition (the C++
# kernels get the same numbers from the paramgeom/contract.h rendered from it).
FLOAT32 = tl.constexpr(_contract.FLOAT32)
BFLOAT16 = tl.constexpr(_contract.BFLOAT16)
FLOAT16 = tl.constexpr(_contract.FLOAT16)
FLOAT8_E4M3 = tl.constexpr(_contract.FLOAT8_E4M3)
FLOAT8_E5M2 = tl.constexpr(_contract.FLOAT8_E5M2)

MAX_TOLS = tl.constexpr(_contract.MAX_TOLS)
COUNT = tl.constexpr(_contract.COUNT)
EQUAL = tl.constexpr(_contract.EQUAL)
NONFINITE0 = tl.constexpr(_contract.NONFINITE0)
NONFINITE1 = tl.constexpr(_contract.NONFINITE1)
REL0 = tl.constexpr(_contract.REL0)
ABS0 = tl.constexpr(_contract.ABS0)
NUM_COUNTS = tl.constexpr(_contract.NUM_COUNTS)
SUM_SQ_DELTA = tl.constexpr(_contract.SUM_SQ_DELTA)
SUM_SQ_W0 = tl.constexpr(_contract.SUM_SQ_W0)
SUM_SQ_W1 = tl.constexpr(_contract.SUM_SQ_W1)
SUM_W0W1 = tl.constexpr(_contract.SUM_W0W1)
MAX_ABS_DELTA = tl.constexpr(_contract.MAX_ABS_DELTA)
NUM_SUMS = tl.constexpr(_contract.NUM_SUMS)
SCALE_BLOCK = tl.constexpr(_contract.SCALE_BLOCK)

# Integer bit views that carry each storage dtype (paramgeom._dtypes.bits_view).
_BITS_DTYPE = {
    _contract.FLOAT32: torch.int32,
    _contract.BFLOAT16: torch.int16,
    _contract.FLOAT16: torch.int16,
    _contract.FLOAT8_E4M3: torch.uint8,
    _contract.FLOAT8_E5M2: torch.uint8,
}

# Rebias factors of the exact decoders (common.h: 0x1p112f, 0x1p120f).
_TWO_POW_112 = tl.constexpr(2.0**112)
_TWO_POW_120 = tl.constexpr(2.0**120)


@triton.jit
def _decode_f16(u):
    """IEEE half bits (in the low 16 bits of uint32 ``u``) -> exact fp32 (common.h).

    Exponent+mantissa shifted into fp32 position and multiplied by 2^(127-15): rebiases
    normals, turns half subnormals into fp32 normals. Inf/NaN keep their payload.
    """
    sign = (u & 0x8000) << 16
    em = u & 0x7FFF
    scaled = (em << 13).to(tl.float32, bitcast=True) * _TWO_POW_112
    special = (em << 13) | 0x7F800000
    mag = tl.where(em >= 0x7C00, special, scaled.to(tl.uint32, bitcast=True))
    return (mag | sign).to(tl.float32, bitcast=True)


@triton.jit
def _decode_f8e4m3(u):
    """float8_e4m3fn bits (low 8 bits of uint32 ``u``) -> exact fp32: bias 7, no Inf,
    |x| == 0x7f is NaN (common.h)."""
    sign = (u & 0x80) << 24
    em = u & 0x7F
    scaled = (em << 20).to(tl.float32, bitcast=True) * _TWO_POW_120
    nan = tl.full(em.shape, 0x7FC00000, tl.uint32)
    mag = tl.where(em == 0x7F, nan, scaled.to(tl.uint32, bitcast=True))
    return (mag | sign).to(tl.float32, bitcast=True)


@triton.jit
def _decode(bits, DTYPE: tl.constexpr):
    """Storage bits (int32 / int16 / uint8 view) -> exact fp32 value."""
    if DTYPE == FLOAT32:
        f = bits.to(tl.float32, bitcast=True)
    elif DTYPE == BFLOAT16:
        f = (bits.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif DTYPE == FLOAT16:
        f = _decode_f16(bits.to(tl.uint16, bitcast=True).to(tl.uint32))
    elif DTYPE == FLOAT8_E4M3:
        f = _decode_f8e4m3(bits.to(tl.uint32))
    else:  # FLOAT8_E5M2: the high byte of an IEEE half
        f = _decode_f16(bits.to(tl.uint32) << 8)
    return f


@triton.jit
def _round_to_bf16(f):
    """fp32 -> bf16 (round to nearest even) widened back to fp32; NaN -> quiet NaN."""
    u = f.to(tl.uint32, bitcast=True)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    nan = tl.full(u.shape, 0x7FC00000, tl.uint32)
    return tl.where(is_nan, nan, rounded).to(tl.float32, bitcast=True)


@triton.jit
def _diff_stats_kernel(
    w0_ptr,
    w1_ptr,
    tols_ptr,  # fp64 [2 * MAX_TOLS]: rel tolerances at 0.., abs tolerances at MAX_TOLS..
    part_counts_ptr,  # int64 [programs, NUM_COUNTS], zero-filled
    part_sums_ptr,  # fp64 [programs, NUM_SUMS]
    row_changed_ptr,  # int64 [col programs, rows] (PER_ROW only)
    row_sq_ptr,  # fp64 [col programs, rows] (PER_ROW only)
    scale0_ptr,  # fp32 block-scale grids of w0 / w1 (SCALED only)
    scale1_ptr,
    scale_stride0,  # elements between grid rows
    scale_stride1,
    scale_row0,  # weight row of the view's row 0
    rows,
    cols,
    stride0,
    stride1,
    rows_per_prog,
    cols_per_prog,
    DTYPE: tl.constexpr,
    CAST_BF16: tl.constexpr,
    SCALED: tl.constexpr,
    N_REL: tl.constexpr,  # number of relative tolerances (0..MAX_TOLS)
    N_ABS: tl.constexpr,  # number of absolute tolerances (0..MAX_TOLS)
    PER_ROW: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid = pid_r * tl.num_programs(1) + pid_c
    row_lo = pid_r * rows_per_prog
    row_hi = tl.minimum(row_lo + rows_per_prog, rows)
    col_lo = pid_c * cols_per_prog
    col_hi = tl.minimum(col_lo + cols_per_prog, cols)

    # Per-tolerance values are tuples grown in unrolled loops, not list comprehensions:
    # Triton 3.6 compiles no comprehension over a constexpr ("only tuple comprehensions
    # are supported"; tests/triton_compile_check.py compiles with it).
    etas = ()
    for i in tl.static_range(N_REL):
        etas = etas + (tl.load(tols_ptr + i),)
    atols = ()
    for i in tl.static_range(N_ABS):
        atols = atols + (tl.load(tols_ptr + MAX_TOLS + i),)

    zero_i = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int32)
    zero_f = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float64)
    n_equal = zero_i
    n_nonfinite0 = zero_i
    n_nonfinite1 = zero_i
    n_rel = ()
    for _i in tl.static_range(N_REL):
        n_rel = n_rel + (zero_i,)
    n_abs = ()
    for _i in tl.static_range(N_ABS):
        n_abs = n_abs + (zero_i,)
    sum_dd = zero_f
    sum_aa = zero_f
    sum_bb = zero_f
    sum_ab = zero_f
    max_ad = zero_f

    r_arange = tl.arange(0, BLOCK_R).to(tl.int64)
    c_arange = tl.arange(0, BLOCK_C).to(tl.int64)
    for r0 in range(row_lo, row_hi, BLOCK_R):
        r = r0 + r_arange
        r_mask = r < row_hi
        off0 = r[:, None] * stride0
        off1 = r[:, None] * stride1
        if SCALED:
            scale_r = (scale_row0 + r[:, None]) // SCALE_BLOCK
            soff0 = scale_r * scale_stride0
            soff1 = scale_r * scale_stride1
        row_changed = zero_i
        row_sq = zero_f
        for c0 in range(col_lo, col_hi, BLOCK_C):
            c = c0 + c_arange
            # Row and column masks only: with cols and the strides divisible by 16, the
            # loads vectorise.
            mask = r_mask[:, None] & (c < col_hi)[None, :]
            x0 = tl.load(w0_ptr + (off0 + c[None, :]), mask=mask, other=0)
            x1 = tl.load(w1_ptr + (off1 + c[None, :]), mask=mask, other=0)
            fa = _decode(x0, DTYPE)
            fb = _decode(x1, DTYPE)
            if SCALED:
                # The fp32 product (one rounding: enable_fp_fusion is off), then bf16,
                # exactly scaled_element() of paramgeom/diff_stats.h.
                scale_c = (c // SCALE_BLOCK)[None, :]
                s0 = tl.load(scale0_ptr + (soff0 + scale_c), mask=mask, other=1.0)
                s1 = tl.load(scale1_ptr + (soff1 + scale_c), mask=mask, other=1.0)
                fa = _round_to_bf16(fa * s0)
                fb = _round_to_bf16(fb * s1)
            if CAST_BF16:
                fa = _round_to_bf16(fa)
                fb = _round_to_bf16(fb)
            # Classify in fp32 (exact, and the same answers as in fp64), then widen only
            # finite pairs: non-finite values never enter the fp64 arithmetic.
            fin0 = tl.abs(fa) < float("inf")
            fin1 = tl.abs(fb) < float("inf")
            fin = fin0 & fin1 & mask
            equal = (fa == fb) & mask
            n_equal += equal.to(tl.int32)
            n_nonfinite0 += (mask & (fin0 == 0)).to(tl.int32)
            n_nonfinite1 += (mask & (fin1 == 0)).to(tl.int32)
            a = tl.where(fin, fa, 0.0).to(tl.float64)
            b = tl.where(fin, fb, 0.0).to(tl.float64)
            d = b - a
            ad = tl.abs(d)
            m = tl.maximum(tl.abs(a), tl.abs(b))
            within_rel = ()
            for i in tl.static_range(N_REL):
                within_rel = within_rel + (fin & (ad <= etas[i] * m),)
            counted = ()
            for i in tl.static_range(N_REL):
                counted = counted + (n_rel[i] + within_rel[i].to(tl.int32),)
            n_rel = counted
            counted = ()
            for i in tl.static_range(N_ABS):
                counted = counted + (n_abs[i] + (fin & (ad <= atols[i])).to(tl.int32),)
            n_abs = counted
            dd = d * d
            sum_dd += dd
            sum_aa += a * a
            sum_bb += b * b
            sum_ab += a * b
            max_ad = tl.maximum(max_ad, ad)
            if PER_ROW:
                # Without a relative tolerance, per-row "changed" is inequality.
                unchanged = equal
                if N_REL > 0:
                    unchanged = within_rel[0]
                row_changed += (mask & (unchanged == 0)).to(tl.int32)
                row_sq += dd
        if PER_ROW:
            row_out = pid_c * rows + r
            tl.store(
                row_changed_ptr + row_out, tl.sum(row_changed, axis=1).to(tl.int64), mask=r_mask
            )
            tl.store(row_sq_ptr + row_out, tl.sum(row_sq, axis=1), mask=r_mask)

    counts_out = part_counts_ptr + pid * NUM_COUNTS
    tl.store(counts_out + EQUAL, tl.sum(tl.sum(n_equal, axis=1), axis=0).to(tl.int64))
    tl.store(counts_out + NONFINITE0, tl.sum(tl.sum(n_nonfinite0, axis=1), axis=0).to(tl.int64))
    tl.store(counts_out + NONFINITE1, tl.sum(tl.sum(n_nonfinite1, axis=1), axis=0).to(tl.int64))
    for i in tl.static_range(N_REL):
        tl.store(counts_out + REL0 + i, tl.sum(tl.sum(n_rel[i], axis=1), axis=0).to(tl.int64))
    for i in tl.static_range(N_ABS):
        tl.store(counts_out + ABS0 + i, tl.sum(tl.sum(n_abs[i], axis=1), axis=0).to(tl.int64))
    sums_out = part_sums_ptr + pid * NUM_SUMS
    tl.store(sums_out + SUM_SQ_DELTA, tl.sum(tl.sum(sum_dd, axis=1), axis=0))
    tl.store(sums_out + SUM_SQ_W0, tl.sum(tl.sum(sum_aa, axis=1), axis=0))
    tl.store(sums_out + SUM_SQ_W1, tl.sum(tl.sum(sum_bb, axis=1), axis=0))
    tl.store(sums_out + SUM_W0W1, tl.sum(tl.sum(sum_ab, axis=1), axis=0))
    tl.store(sums_out + MAX_ABS_DELTA, tl.max(tl.max(max_ad, axis=1), axis=0))


# The interpreter (TRITON_INTERPRET=1, read when the kernel is decorated) runs on CPU
# tensors; compiled kernels need CUDA (or ROCm) tensors.
INTERPRETED = not isinstance(_diff_stats_kernel, triton.runtime.JITFunction)


def diff_stats_triton(
    w0_bits: torch.Tensor,
    w1_bits: torch.Tensor,
    dtype_code: int,
    rel_tols: tuple[float, ...],
    abs_tols: tuple[float, ...],
    cast_bf16: bool,
    per_row: bool,
    scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale_row0: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Fused diff statistics of two 2-D storage-bit views (see the module docstring).

    Parameters
    ----------
    w0_bits, w1_bits : Tensor (rows, cols)
        Integer views of the storage bits (int32 for fp32, int16 for bf16/fp16, uint8 for
        fp8), same shape and device, inner stride 1 (unless ``cols <= 1``); row strides
        may differ between the two.
    dtype_code : int
        Storage dtype (0 fp32, 1 bf16, 2 fp16, 3 float8_e4m3fn, 4 float8_e5m2).
    rel_tols, abs_tols : tuple of float
        Up to 8 relative and 8 absolute tolerances.
    cast_bf16 : bool
        Round both inputs to bf16 (round to nearest even) before comparing.
    per_row : bool
        Also return the per-row changed count and squared-delta sum.
    scales : (Tensor, Tensor) or None
        Block-scale grids of w0 and w1 (fp8 inputs only): float32, 2-D, inner stride 1, on
        the inputs' device, covering the view's rows (row i is weight row
        ``scale_row0 + i``) and ``ceil(cols / 128)`` columns. The view's rows must then be
        the weight's rows.
    scale_row0 : int
        With ``scales``: the weight row of the view's row 0.

    Returns
    -------
    counts : int64 [20] (CPU), sums : float64 [5] (CPU)
        In the layout of ``paramgeom._contract``.
    row_changed : int64 [rows] or None, row_sq_delta : float64 [rows] or None
        On the inputs' device.
    """
    if dtype_code not in _BITS_DTYPE:
        raise ValueError(f"unknown dtype code {dtype_code}")
    bits_dtype = _BITS_DTYPE[dtype_code]
    for name, t in (("w0_bits", w0_bits), ("w1_bits", w1_bits)):
        if t.dtype != bits_dtype:
            raise TypeError(f"{name}: dtype code {dtype_code} needs {bits_dtype}, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D view, got shape {tuple(t.shape)}")
        if t.shape[1] > 1 and t.stride(1) != 1:
            raise ValueError(f"{name}: inner stride must be 1, got {t.stride(1)}")
    if w0_bits.shape != w1_bits.shape:
        raise ValueError(f"shape mismatch: {tuple(w0_bits.shape)} vs {tuple(w1_bits.shape)}")
    if w0_bits.device != w1_bits.device:
        raise ValueError(f"device mismatch: {w0_bits.device} vs {w1_bits.device}")
    if not INTERPRETED and w0_bits.device.type != "cuda":
        raise ValueError(
            f"Triton kernels need GPU tensors, got {w0_bits.device} "
            "(set TRITON_INTERPRET=1 before importing to run them on CPU tensors)"
        )
    if scales is not None:
        _check_scales(scales, scale_row0, dtype_code, rows=w0_bits.shape[0], cols=w0_bits.shape[1],
                      device=w0_bits.device)  # fmt: skip
    rel_tols = tuple(float(t) for t in rel_tols)
    abs_tols = tuple(float(t) for t in abs_tols)
    max_tols = MAX_TOLS.value
    if len(rel_tols) > max_tols or len(abs_tols) > max_tols:
        raise ValueError(f"at most {max_tols} relative and {max_tols} absolute tolerances")

    device = w0_bits.device
    rows, cols = w0_bits.shape
    numel = rows * cols
    counts = torch.zeros(NUM_COUNTS.value, dtype=torch.int64)
    sums = torch.zeros(NUM_SUMS.value, dtype=torch.float64)
    counts[COUNT.value] = numel
    row_changed = row_sq = None
    if per_row:
        row_changed = torch.zeros(rows, dtype=torch.int64, device=device)
        row_sq = torch.zeros(rows, dtype=torch.float64, device=device)
    if numel == 0:
        return counts, sums, row_changed, row_sq

    tols = torch.zeros(2 * max_tols, dtype=torch.float64)
    tols[: len(rel_tols)] = torch.tensor(rel_tols, dtype=torch.float64)
    tols[max_tols : max_tols + len(abs_tols)] = torch.tensor(abs_tols, dtype=torch.float64)
    tols = tols.to(device)
    launch = functools.partial(
        _launch,
        tols=tols,
        dtype_code=dtype_code,
        n_rel=len(rel_tols),
        n_abs=len(abs_tols),
        cast_bf16=bool(cast_bf16),
        scales=scales,
        scale_row0=int(scale_row0),
    )

    contiguous = all(rows == 1 or t.stride(0) == cols for t in (w0_bits, w1_bits))
    if per_row or scales is not None:  # scales are indexed by the weight's own rows
        parts = [launch(w0_bits, w1_bits, row_changed=row_changed, row_sq=row_sq)]
    elif contiguous:
        # One contiguous run: full-width rows of the flat index (so one long row spreads
        # over many programs, and no mask breaks vector loads), then the short tail.
        flat0, flat1 = w0_bits.view(-1), w1_bits.view(-1)
        width = FLAT_WIDTH
        full_rows = numel // width
        bulk = full_rows * width
        parts = []
        if full_rows:
            parts.append(
                launch(flat0[:bulk].view(full_rows, width), flat1[:bulk].view(full_rows, width))
            )
        if bulk < numel:
            parts.append(launch(flat0[bulk:].view(1, -1), flat1[bulk:].view(1, -1)))
    else:
        parts = [launch(w0_bits, w1_bits)]

    # Fixed-order reductions over the partials (launch order, then program order), on the
    # device; one transfer brings counts and sums (as int64 bits) back.
    part_counts = torch.cat([p[0] for p in parts])
    part_sums = torch.cat([p[1] for p in parts])
    imax = MAX_ABS_DELTA.value
    totals = torch.cat(
        [
            part_counts.sum(dim=0),
            part_sums[:, :imax].sum(dim=0).view(torch.int64),
            part_sums[:, imax].max().reshape(1).view(torch.int64),
        ]
    ).cpu()
    counts[EQUAL.value :] = totals[EQUAL.value : NUM_COUNTS.value]
    sums[:] = totals[NUM_COUNTS.value :].view(torch.float64)
    return counts, sums, row_changed, row_sq


def _check_scales(scales, scale_row0: int, dtype_code: int, rows: int, cols: int, device) -> None:
    """ValueError / TypeError unless ``scales`` is a pair of grids this view can read."""
    if dtype_code not in (_contract.FLOAT8_E4M3, _contract.FLOAT8_E5M2):
        raise ValueError(f"block scales need fp8 inputs, got dtype code {dtype_code}")
    if isinstance(scale_row0, bool) or not isinstance(scale_row0, int) or scale_row0 < 0:
        raise ValueError(f"scale_row0 must be an int >= 0, got {scale_row0!r}")
    if not isinstance(scales, (tuple, list)) or len(scales) != 2:
        raise TypeError("scales must be a pair (grid of w0, grid of w1)")
    block = _contract.SCALE_BLOCK
    need_rows = (scale_row0 + rows - 1) // block + 1 if rows else 0
    need_cols = -(-cols // block)
    for name, grid in zip(("scale0", "scale1"), scales, strict=True):
        if not isinstance(grid, torch.Tensor) or grid.dtype != torch.float32 or grid.dim() != 2:
            raise TypeError(f"{name}: expected a 2-D float32 tensor")
        if grid.device != device:
            raise ValueError(f"{name}: on {grid.device}, the inputs on {device}")
        if grid.shape[1] > 1 and grid.stride(1) != 1:
            raise ValueError(f"{name}: must have contiguous rows")
        if grid.shape[1] != need_cols or grid.shape[0] < need_rows:
            raise ValueError(
                f"{name} of shape {tuple(grid.shape)} does not cover weight rows "
                f"[{scale_row0}, {scale_row0 + rows}) of {cols} columns in {block}-blocks"
            )


def _launch(
    w0: torch.Tensor,
    w1: torch.Tensor,
    *,
    tols: torch.Tensor,
    dtype_code: int,
    n_rel: int,
    n_abs: int,
    cast_bf16: bool,
    scales: tuple[torch.Tensor, torch.Tensor] | None,
    scale_row0: int,
    row_changed: torch.Tensor | None = None,
    row_sq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One kernel launch over a non-empty (rows, cols) view; returns the partials
    (int64 [programs, NUM_COUNTS], fp64 [programs, NUM_SUMS]) and fills the per-row
    outputs when given."""
    rows, cols = w0.shape
    plan = plan_2d(rows, cols)
    device = w0.device
    part_counts = torch.zeros(plan.num_programs, NUM_COUNTS, dtype=torch.int64, device=device)
    part_sums = torch.zeros(plan.num_programs, NUM_SUMS, dtype=torch.float64, device=device)
    per_row = row_changed is not None
    col_progs = plan.grid[1]
    if per_row and col_progs > 1:  # one piece per column program, summed below
        part_changed = torch.zeros(col_progs, rows, dtype=torch.int64, device=device)
        part_sq = torch.zeros(col_progs, rows, dtype=torch.float64, device=device)
    elif per_row:
        part_changed, part_sq = row_changed, row_sq
    else:  # never written (PER_ROW is off); any valid pointer will do
        part_changed, part_sq = part_counts, part_sums
    if scales is not None:
        scale0, scale1 = scales
        scale_strides = [g.stride(0) if g.shape[0] > 1 else 0 for g in scales]
    else:  # never read (SCALED is off); any valid pointer will do
        scale0 = scale1 = part_sums
        scale_strides = [0, 0]

    _diff_stats_kernel[plan.grid](
        w0,
        w1,
        tols,
        part_counts,
        part_sums,
        part_changed,
        part_sq,
        scale0,
        scale1,
        scale_strides[0],
        scale_strides[1],
        scale_row0,
        rows,
        cols,
        w0.stride(0),
        w1.stride(0),
        plan.rows_per_prog,
        plan.cols_per_prog,
        DTYPE=dtype_code,
        CAST_BF16=cast_bf16,
        SCALED=scales is not None,
        N_REL=n_rel,
        N_ABS=n_abs,
        PER_ROW=per_row,
        BLOCK_R=plan.block_r,
        BLOCK_C=plan.block_c,
        num_warps=plan.num_warps,
        # Products rounded before they are added, as in the fp64 reference, whatever the
        # Triton version's default.
        enable_fp_fusion=False,
    )
    if per_row and col_progs > 1:
        torch.sum(part_changed, dim=0, out=row_changed)
        torch.sum(part_sq, dim=0, out=row_sq)
    return part_counts, part_sums
