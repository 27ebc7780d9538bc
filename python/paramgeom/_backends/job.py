"""What the API hands to a backend for one diff-statistics call, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paramgeom import _contract


@dataclass(frozen=True)
class DiffStatsJob:
    """One fused diff-statistics pass over a 2-D view of both inputs.

    ``w0`` and ``w1`` are integer bit views (``paramgeom._dtypes.bits_view``) of shape
    ``(rows, cols)`` whose last stride is 1 (or ``cols <= 1``); their row strides may
    differ. A contiguous tensor arrives as ``(1, numel)`` unless per-row outputs are asked
    for, in which case rows are the tensor's rows (all dims but the last, flattened).
    """

    w0: torch.Tensor
    w1: torch.Tensor
    dtype_code: int
    rel_tols: tuple[float, ...]
    abs_tols: tuple[float, ...]
    cast_bf16: bool
    per_row: bool
    # Block-scaled fp8 (paramgeom/diff_stats.h, BlockScales): both or neither. float32,
    # shape (grid rows, ceil(cols / 128)), inner stride 1, on the inputs' device; the view's
    # row i is weight row scale_row0 + i. Scaled values are always rounded to bf16 (cast_bf16
    # is then False: it concerns fp32 / fp16 inputs only).
    scale0: torch.Tensor | None = None
    scale1: torch.Tensor | None = None
    scale_row0: int = 0

    @property
    def scaled(self) -> bool:
        return self.scale0 is not None

    @property
    def rows(self) -> int:
        return self.w0.shape[0]

    @property
    def cols(self) -> int:
        return self.w0.shape[1]

    @property
    def changed_index(self) -> int:
        """Which count defines "unchanged" for the per-row outputs (see ``paramgeom._contract``)."""
        return _contract.REL0 if self.rel_tols else _contract.EQUAL


@dataclass
class DiffStatsRaw:
    """Backend output: totals in the ``paramgeom._contract`` order (on the CPU) and optional rows.

    ``row_changed`` (int64) and ``row_sq_delta`` (float64) have ``rows`` entries on the
    inputs' device, or are None when per-row outputs were not asked for.
    """

    counts: torch.Tensor
    sums: torch.Tensor
    row_changed: torch.Tensor | None = None
    row_sq_delta: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------
# Linear-algebra ops (DESIGN.md kernels 2 and 3). No job objects: every backend module
# defines these two functions with exactly these signatures, and the API layer
# (``paramgeom.api.diff_matmul`` / ``paramgeom.api.gram_update``) establishes the
# preconditions below before it calls them, so a backend checks nothing and copies nothing.
#
# ``diff_matmul(w0, w1, x, transpose, out) -> None``
#     Writes ``out = (w1 - w0) @ x`` (``transpose=False``) or ``out = (w1 - w0)^T @ x``
#     (``transpose=True``), overwriting ``out`` (never accumulating into it).
#     * ``w0``, ``w1``: torch tensors in their storage dtype (bfloat16, float16 or
#       float32; the same dtype for both), 2-D, the same shape ``(m, n)``, on the same
#       device, inner stride ``stride(1) == 1``; their row strides ``stride(0)`` may
#       differ from each other and from ``n`` (slices of bigger matrices), and may be 0.
#     * ``x``: float32, contiguous, ``(n, k)`` (or ``(m, k)`` with ``transpose``).
#     * ``out``: float32, contiguous, ``(m, k)`` (or ``(n, k)`` with ``transpose``); it
#       does not overlap any input.
#     * ``m, n, k >= 1`` (the API answers empty problems itself).
#     * Semantics: each difference ``w1[i, j] - w0[i, j]`` is formed in fp32 from the
#       exactly widened inputs (exact for bf16/fp16, one fp32 rounding for fp32) and the
#       full difference matrix is never materialised; products and sums in fp32 or wider
#       (no TF32, no reduced-precision tensor-core inputs): the result must be within 1e-5
#       relative (Frobenius) of ``paramgeom.reference.diff_matmul_ref``.
#     * Runs on the inputs' device, on the caller's current stream; deterministic for a
#       given backend, shape and device.
#
# ``gram_update(G, x, x0, alpha) -> None``
#     In place, ``G += alpha * (x - x0)^T (x - x0)`` (``x0 is None`` means zero).
#     * ``x``: bfloat16, float16 or float32, 2-D ``(r, n)``, inner stride 1 (row stride
#       free); ``x0``: None or the same dtype, shape and device as ``x``, inner stride 1.
#     * ``G``: contiguous ``(n, n)``; float64 on the CPU; float32 or float64 on a GPU.
#     * ``alpha``: a Python float.
#     * ``r, n >= 1``.
#     * Semantics: the difference is formed in fp32 (exact for bf16/fp16) and never
#       stored at full size; products accumulate in fp64 on the CPU, in fp32 (at least)
#       per call on a GPU, then ``alpha * tile`` is added to ``G`` in ``G``'s dtype.
#       Row blocks may arrive one call at a time: the calls' sum is the Gram of the whole.
#       Every entry of ``G`` is written (the full square, not one triangle).
#     * Same device, stream and determinism rules as ``diff_matmul``.
