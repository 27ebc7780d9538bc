"""Model-, module-, layer- and expert-stack-level figures from the per-tensor rows.

Definitions (DESIGN.md, "Metrics"):

- **Unchanged fraction** is parameter-count weighted over tensors:
  ``sum(numel * uf) / sum(numel)`` over the tensors whose fraction is known (the same for the
  ``atol`` rule, kept only to compare with older tools, and for the equal fraction).
- **Relative update size** ``||dW||_F / ||W0||_F`` of a group is
  ``sqrt(sum ||dW||_F^2) / sqrt(sum ||W0||_F^2)``, i.e. the whole group as one vector.
- **Stable rank**, **effective rank**, **spectral drift** and **principal angles** exist for
  2-D matrices only; group figures are plain means (and medians) over the matrices that have
  them, except the mean principal angles, which are parameter-count weighted.
- **Trajectory** and **subspace locking**: per saved step, the mean stable rank of dW_t over
  matrices, the model-wide ``||dW_t||_F``, the mean Hill index, the mean
  ``Sim_K(t, t_end)``; locking is the first step from which ``Sim_K`` stays above a threshold
  and the stable rank stays below ``K``.

Missing (None) and non-finite (NaN/Inf) values are left out of every figure, as the table's
``n_nonfinite`` column documents ("excluded from figures"); a figure with no data is None.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "MODULE_ORDER",
    "group_figures",
    "lock_rule",
    "lock_step",
    "module_sort_key",
    "summarize_diff",
    "summarize_trajectory",
]

#: Display order of module types (DESIGN "Metrics"); unknown types follow, alphabetically.
MODULE_ORDER = (
    "q",
    "k",
    "v",
    "o",
    "gate",
    "up",
    "down",
    "embed",
    "lm_head",
    "norm",
    "bias",
    "router",
    "other",
)


def module_sort_key(module: str) -> tuple[int, str]:
    """Sort key that puts module types in :data:`MODULE_ORDER`, the rest alphabetically after."""
    try:
        return (MODULE_ORDER.index(module), "")
    except ValueError:
        return (len(MODULE_ORDER), module)


def _layer_sort_key(key: str) -> tuple[int, int, str]:
    """``by_layer`` keys in numeric order, ``"none"`` (outside the layers) last."""
    try:
        return (0, int(key), "")
    except ValueError:
        return (1, 0, key)


# --------------------------------------------------------------------------------------------
# small helpers that skip None / NaN / Inf
# --------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None when missing or non-finite."""
    if type(value) is float:  # the common case, as the generic path below gives it
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _values(rows: Iterable[Mapping[str, Any]], col: str) -> list[float]:
    return [v for v in (_num(r.get(col)) for r in rows) if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _max(values: Sequence[float]) -> float | None:
    return max(values) if values else None


def _weighted(rows: Iterable[Mapping[str, Any]], col: str, weight: str = "numel") -> float | None:
    """``sum(w * v) / sum(w)`` over rows where both ``w`` and ``v`` are known and finite."""
    num, den = [], []
    for r in rows:
        v, w = _num(r.get(col)), _num(r.get(weight))
        if v is None or w is None:
            continue
        num.append(w * v)
        den.append(w)
    total = math.fsum(den)
    return math.fsum(num) / total if den and total > 0 else None


def _root_sum_sq(values: Sequence[float]) -> float | None:
    return math.sqrt(math.fsum(v * v for v in values)) if values else None


def _relative_change(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """``sqrt(sum ||dW||^2) / sqrt(sum ||W0||^2)`` over rows that have both norms."""
    dd, bb = [], []
    for r in rows:
        d, b = _num(r.get("frobenius_delta")), _num(r.get("frobenius_base"))
        if d is None or b is None:
            continue
        dd.append(d * d)
        bb.append(b * b)
    base = math.fsum(bb)
    return math.sqrt(math.fsum(dd)) / math.sqrt(base) if bb and base > 0 else None


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


# Columns of the diff rows that group figures read, in the order of :func:`_prepare`'s tuples.
_SPECTRAL = ("stable_rank", "effective_rank", "spectral_drift", "angle_left_max", "angle_right_max")
_WEIGHTED = (
    "unchanged_fraction",
    "unchanged_fraction_atol",
    "equal_fraction",
    "angle_left_mean",
    "angle_right_mean",
)


def _prepare(r: Mapping[str, Any]) -> tuple:
    """What :func:`_figures` reads from one row, each cell read once: (numel as int or None,
    n_nonfinite as int or None, has a stable rank, finite numel, finite frobenius_delta,
    finite frobenius_base, finite max_abs_delta, the :data:`_SPECTRAL` values, the
    :data:`_WEIGHTED` values), None where missing or non-finite."""
    get = r.get
    numel = get("numel")
    nonfinite = get("n_nonfinite")
    return (
        None if numel is None else int(numel),
        None if nonfinite is None else int(nonfinite),
        get("stable_rank") is not None,
        _num(numel),
        _num(get("frobenius_delta")),
        _num(get("frobenius_base")),
        _num(get("max_abs_delta")),
        tuple(_num(get(c)) for c in _SPECTRAL),
        tuple(_num(get(c)) for c in _WEIGHTED),
    )


def _figures(prepared: Sequence[tuple]) -> dict[str, Any]:
    """:func:`group_figures` of rows given as :func:`_prepare` tuples, in one pass. Every
    sum is ``math.fsum`` (exact, so independent of order) and every list keeps row order:
    the figures are those of the column-by-column definitions."""
    numel = nonfinite = n_matrices = 0
    spectral: list[list[float]] = [[] for _ in _SPECTRAL]
    wnum: list[list[float]] = [[] for _ in _WEIGHTED]
    wden: list[list[float]] = [[] for _ in _WEIGHTED]
    deltas, bases, maxes, dd, bb = [], [], [], [], []
    for n_int, nf_int, has_sr, w, d, b, mx, spec, weighted in prepared:
        if n_int is not None:
            numel += n_int
        if nf_int is not None:
            nonfinite += nf_int
        n_matrices += has_sr
        if d is not None:
            deltas.append(d)
        if b is not None:
            bases.append(b)
        if d is not None and b is not None:
            dd.append(d * d)
            bb.append(b * b)
        if mx is not None:
            maxes.append(mx)
        for out, v in zip(spectral, spec, strict=True):
            if v is not None:
                out.append(v)
        if w is not None:
            for num, den, v in zip(wnum, wden, weighted, strict=True):
                if v is not None:
                    num.append(w * v)
                    den.append(w)
    weighted_figs = []
    for num, den in zip(wnum, wden, strict=True):
        total = math.fsum(den)
        weighted_figs.append(math.fsum(num) / total if den and total > 0 else None)
    base = math.fsum(bb)
    sr, er, drift, alm, arm = spectral
    uf, uf_atol, eq, alw, arw = weighted_figs
    return {
        "n_tensors": len(prepared),
        "numel": numel,
        "n_matrices": n_matrices,
        "n_nonfinite": nonfinite,
        "unchanged_fraction": uf,
        "unchanged_fraction_atol": uf_atol,
        "equal_fraction": eq,
        "frobenius_delta": _root_sum_sq(deltas),
        "frobenius_base": _root_sum_sq(bases),
        "relative_change": math.sqrt(math.fsum(dd)) / math.sqrt(base) if bb and base > 0 else None,
        "max_abs_delta": _max(maxes),
        "stable_rank_mean": _mean(sr),
        "stable_rank_median": _median(sr),
        "effective_rank_mean": _mean(er),
        "effective_rank_median": _median(er),
        "spectral_drift_mean": _mean(drift),
        "spectral_drift_median": _median(drift),
        "angle_left_max_mean": _mean(alm),
        "angle_left_max_max": _max(alm),
        "angle_right_max_mean": _mean(arm),
        "angle_right_max_max": _max(arm),
        "angle_left_mean": alw,
        "angle_right_mean": arw,
    }


def group_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figures of one group of per-tensor diff rows (the model, a module type, a layer, ...).

    Keys (DESIGN "Metrics"): ``n_tensors``; ``numel`` (sum); ``n_matrices`` (rows with a
    stable rank); ``n_nonfinite`` (sum); ``unchanged_fraction``, ``unchanged_fraction_atol``,
    ``equal_fraction`` (numel-weighted); ``frobenius_delta``, ``frobenius_base`` (root sum of
    squares); ``relative_change`` (their ratio over rows with both); ``max_abs_delta`` (max);
    ``stable_rank_mean``/``_median``, ``effective_rank_mean``/``_median``,
    ``spectral_drift_mean``/``_median`` (over matrices); ``angle_left_max_mean`` and
    ``angle_left_max_max`` (mean and max over matrices of the per-matrix max angle, degrees),
    the same for ``right``; ``angle_left_mean``, ``angle_right_mean`` (numel-weighted mean of
    the per-matrix mean angle).
    """
    return _figures([_prepare(r) for r in rows])


def _group_by(
    rows: Iterable[Mapping[str, Any]],
    col: str,
    none_key: str = "none",
    items: Sequence | None = None,
) -> dict[str, list]:
    """Rows by ``str(row[col])`` (``none_key`` for None), in row order; with ``items`` (one
    per row), those items grouped by their row's value instead of the rows."""
    groups: dict[str, list] = {}
    for i, r in enumerate(rows):
        v = r.get(col)
        groups.setdefault(none_key if v is None else str(v), []).append(
            r if items is None else items[i]
        )
    return groups


def summarize_diff(rows: list[dict]) -> dict:
    """Summary of a ``paramgeom diff`` table (DESIGN "Metrics": per module, per layer, model).

    Returns ``{"model": F, "by_module": {module: F}, "by_layer": {str(layer): F},
    "by_stack": {stack: F + {"n_experts"}}}`` where ``F`` is :func:`group_figures`. Rows with
    no layer go under ``"none"`` in ``by_layer`` (and rows with no module under ``"none"`` in
    ``by_module``); ``by_stack`` holds only rows whose ``stack`` is set (mixture-of-experts
    stacks, one row per expert), ``n_experts`` being the number of distinct expert indices.
    Dict keys are in display order (module order, numeric layers, then ``"none"``).
    """
    rows = list(rows)
    prepared = [_prepare(r) for r in rows]
    by_module = _group_by(rows, "module", items=prepared)
    by_layer = _group_by(rows, "layer", items=prepared)
    in_stacks = [i for i, r in enumerate(rows) if r.get("stack") is not None]
    by_stack = _group_by((rows[i] for i in in_stacks), "stack")
    stack_items = _group_by(
        (rows[i] for i in in_stacks), "stack", items=[prepared[i] for i in in_stacks]
    )
    stacks = {}
    for stack in sorted(by_stack):
        figs = _figures(stack_items[stack])
        figs["n_experts"] = len(
            {r["expert"] for r in by_stack[stack] if r.get("expert") is not None}
        )
        stacks[stack] = figs
    return {
        "model": _figures(prepared),
        "by_module": {m: _figures(by_module[m]) for m in sorted(by_module, key=module_sort_key)},
        "by_layer": {k: _figures(by_layer[k]) for k in sorted(by_layer, key=_layer_sort_key)},
        "by_stack": stacks,
    }


# --------------------------------------------------------------------------------------------
# trajectory
# --------------------------------------------------------------------------------------------


def _step_figures(rows: Sequence[Mapping[str, Any]], weighted: bool) -> dict[str, Any]:
    """Figures of the matrices of one saved step (DESIGN "Trajectory")."""
    uf = (
        _weighted(rows, "unchanged_fraction")
        if weighted
        else _mean(_values(rows, "unchanged_fraction"))
    )
    return {
        "n_matrices": len(rows),
        "stable_rank_mean": _mean(_values(rows, "stable_rank")),
        "frobenius_delta": _root_sum_sq(_values(rows, "frobenius_delta")),
        "relative_change_mean": _mean(_values(rows, "relative_change")),
        "hill_alpha_mean": _mean(_values(rows, "hill_alpha")),
        "sim_k_mean": _mean(_values(rows, "sim_k")),
        "unchanged_fraction": uf,
    }


def _steps(rows: Iterable[Mapping[str, Any]], weighted: bool) -> list[dict[str, Any]]:
    by_step: dict[int, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("step") is None:
            raise ValueError(f"trajectory row {r.get('name')!r} has no step")
        by_step.setdefault(int(r["step"]), []).append(r)
    return [{"step": s, **_step_figures(by_step[s], weighted)} for s in sorted(by_step)]


def lock_rule(k: int, lock_threshold: float) -> str:
    """The locking rule in words, as the reports state it (DESIGN "Subspace locking")."""
    return (
        f"lock step = the first saved step t such that at t and at every later step both "
        f"mean Sim_K(t, t_end) >= {lock_threshold:g} and mean stable rank of dW_t < K = {k} "
        f"(means over matrices); the final step alone does not count as locking, since "
        f"Sim_K(t_end, t_end) = 1 by definition; lock fraction = lock step / final step"
    )


def lock_step(
    steps: Sequence[Mapping[str, Any]], k: int = 16, lock_threshold: float = 0.9
) -> dict[str, Any]:
    """Subspace-locking step of a per-step series (DESIGN "Metrics", "Subspace locking").

    ``steps`` are dicts with ``step``, ``sim_k_mean`` and ``stable_rank_mean`` (as in
    ``summarize_trajectory(...)["steps"]``). Step t satisfies the rule when
    ``sim_k_mean(t) >= lock_threshold`` and ``stable_rank_mean(t) < k``; a missing value fails
    it. The lock step is the first t from which every later step satisfies it too. Because
    ``Sim_K(t_end, t_end) = 1`` trivially, a run that satisfies the rule at the final step only
    is not locked. Returns ``{"lock_step", "lock_fraction", "final_step", "k", "threshold",
    "rule"}`` with ``lock_step``/``lock_fraction`` None when never locked.
    """
    ordered = sorted(steps, key=lambda s: s["step"])
    final = ordered[-1]["step"] if ordered else None
    locked_from = None
    for s in reversed(ordered):
        sim, sr = _num(s.get("sim_k_mean")), _num(s.get("stable_rank_mean"))
        if sim is None or sr is None or not (sim >= lock_threshold and sr < k):
            break
        locked_from = s["step"]
    if locked_from is not None and locked_from == final:
        locked_from = None  # only the trivial last step (Sim_K(t_end, t_end) = 1)
    fraction = None
    if locked_from is not None and final:
        fraction = locked_from / final
    return {
        "lock_step": locked_from,
        "lock_fraction": fraction,
        "final_step": final,
        "k": k,
        "threshold": lock_threshold,
        "rule": lock_rule(k, lock_threshold),
    }


def summarize_trajectory(rows: list[dict], k: int = 16, lock_threshold: float = 0.9) -> dict:
    """Summary of a ``paramgeom trajectory`` table (DESIGN "Trajectory", "Subspace locking").

    Returns:

    - ``"steps"``: per saved step (ascending): ``step``, ``n_matrices``, ``stable_rank_mean``
      (mean srank(dW_t) over matrices), ``frobenius_delta`` (model-wide ``||dW_t||_F``, the
      root sum of squares), ``relative_change_mean``, ``hill_alpha_mean``, ``sim_k_mean``
      (mean ``Sim_K(t, t_end)``), ``unchanged_fraction`` (numel-weighted when every row has a
      ``numel`` key, else the mean over matrices: the trajectory table has no ``numel``).
    - ``"steps_by_module"``: module -> the same series over that module type's matrices.
    - ``"lock"``: :func:`lock_step` on the model-wide means.
    - ``"lock_by_module"``: module -> :func:`lock_step` on that module type's means.
    - ``"k"``, ``"lock_threshold"``, ``"unchanged_fraction_weighting"``.
    """
    rows = list(rows)
    by_module = _group_by(rows, "module")
    modules = sorted(by_module, key=module_sort_key)
    weighted = bool(rows) and all(r.get("numel") is not None for r in rows)
    steps = _steps(rows, weighted)
    steps_by_module = {m: _steps(by_module[m], weighted) for m in modules}
    return {
        "steps": steps,
        "steps_by_module": steps_by_module,
        "lock": lock_step(steps, k, lock_threshold),
        "lock_by_module": {m: lock_step(steps_by_module[m], k, lock_threshold) for m in modules},
        "k": k,
        "lock_threshold": lock_threshold,
        "unchanged_fraction_weighting": "numel" if weighted else "mean over matrices",
    }
