"""What the API hands to a backend for one diff-statistics call, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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

    @property
    def rows(self) -> int:
        return self.w0.shape[0]

    @property
    def cols(self) -> int:
        return self.w0.shape[1]

    @property
    def changed_index(self) -> int:
        """Which count defines "unchanged" for the per-row outputs (see ``_layout``)."""
        from paramgeom import _layout

        return _layout.REL0 if self.rel_tols else _layout.EQUAL


@dataclass
class DiffStatsRaw:
    """Backend output: totals in the ``_layout`` order (on the CPU) and optional rows.

    ``row_changed`` (int64) and ``row_sq_delta`` (float64) have ``rows`` entries on the
    inputs' device, or are None when per-row outputs were not asked for.
    """

    counts: torch.Tensor
    sums: torch.Tensor
    row_changed: torch.Tensor | None = None
    row_sq_delta: torch.Tensor | None = None
