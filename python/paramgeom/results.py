"""Typed results returned by the public API."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class DiffStats:
    """Fused difference statistics of two same-shape tensors ``w0`` (base), ``w1`` (tuned).

    Definitions (DESIGN.md, kernel contract 1; the paper's unchanged-parameter rule), with
    ``a = w0``, ``b = w1`` decoded exactly (after optional bf16 rounding) and compared in
    float64:

    - ``n_equal``: ``a == b`` (+0 == -0, NaN never equal, Inf == Inf).
    - ``n_within_rel[i]``: finite pairs with ``|b - a| <= rel_tols[i] * max(|a|, |b|)``;
      with ``rel_tols = (1e-3,)`` on bf16 values this is the paper's "unchanged" count.
    - ``n_within_abs[i]``: finite pairs with ``|b - a| <= abs_tols[i]`` (older tools' rule).
    - ``sum_sq_delta``, ``sum_sq_w0``, ``sum_sq_w1``, ``sum_w0w1``, ``max_abs_delta``:
      over finite pairs only; non-finite inputs are counted in ``n_nonfinite_w0/w1``.
    - ``row_changed``, ``row_sq_delta``: per row (all dims but the last, flattened and
      reshaped back to ``w0.shape[:-1]``), the number of elements not unchanged under
      ``rel_tols[0]`` (under equality when no relative tolerance is given) and the
      squared-delta sum; None unless ``per_row=True``.
    """

    numel: int
    n_equal: int
    rel_tols: tuple[float, ...]
    n_within_rel: tuple[int, ...]
    abs_tols: tuple[float, ...]
    n_within_abs: tuple[int, ...]
    sum_sq_delta: float
    sum_sq_w0: float
    sum_sq_w1: float
    sum_w0w1: float
    max_abs_delta: float
    n_nonfinite_w0: int
    n_nonfinite_w1: int
    backend: str = ""
    row_changed: torch.Tensor | None = field(default=None, repr=False, compare=False)
    row_sq_delta: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def unchanged_fraction(self, rel_tol: float | None = None) -> float:
        """Fraction of elements unchanged under a relative tolerance that was computed.

        Defaults to the first of ``rel_tols`` (the paper's eta = 1e-3 by default). Empty
        tensors give NaN (there is nothing to count).
        """
        if not self.rel_tols:
            raise ValueError("no relative tolerance was computed (rel_tols=())")
        eta = self.rel_tols[0] if rel_tol is None else rel_tol
        if eta not in self.rel_tols:
            raise ValueError(f"rel_tol {eta} was not computed; computed: {self.rel_tols}")
        n = self.n_within_rel[self.rel_tols.index(eta)]
        return n / self.numel if self.numel else math.nan

    @property
    def frobenius_delta(self) -> float:
        """||w1 - w0||_F over finite pairs."""
        return math.sqrt(self.sum_sq_delta)

    @property
    def relative_change(self) -> float:
        """||w1 - w0||_F / ||w0||_F (NaN when w0 is all zeros)."""
        return math.sqrt(self.sum_sq_delta / self.sum_sq_w0) if self.sum_sq_w0 > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (JSON-serialisable; per-row tensors become nested lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.cpu().tolist()
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out
