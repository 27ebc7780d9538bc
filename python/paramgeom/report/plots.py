"""SVG plots of a diff table and of a trajectory (DESIGN.md "Checkpoints", Outputs).

Diff: per-layer by module heat maps of the unchanged fraction and of the principal angles,
histograms of the stable rank and of the max angles, and the unchanged fraction against the
relative update size per tensor (the unchanged fraction falls with update size whatever the
method: DESIGN "Comparing methods"). Trajectory: ``Sim_K(t, t_end)`` with the lock threshold and
lock step, the mean stable rank with the ``K`` line, ``||dW_t||_F`` and the Hill index.

Plots are SVG written by :mod:`paramgeom.report.svg` (standard library only): importing
matplotlib and drawing with it took a third of a statistics-only diff of a 50 MB pair; these
take milliseconds, and no window, backend or global style of the caller's process is touched.
The same rows give byte-identical files. Names from the checkpoints are XML-escaped. A plot
whose data are absent (no 2-D matrices, no layers, no angles, ...) is skipped, not an error.
Each file is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paramgeom.report import svg
from paramgeom.report.aggregate import module_sort_key, summarize_trajectory
from paramgeom.report.tables import atomic_write

__all__ = ["plot_diff", "plot_trajectory"]

BLUE, ORANGE = "#4c72b0", "#dd8452"  # histogram series
RED, GREEN = "#c44e52", "#55a868"  # threshold / K line, lock step


# Largest magnitude a plot takes: beyond it a value is left out like a NaN. Spans near
# float's range would overflow an axis' span, its bins and its tick step (a row of 1.7e308
# crashed the histogram); no figure of a diff or trajectory is meaningful there.
PLOT_MAX = 1e300


def _finite(value: Any) -> float | None:
    if type(value) is float:  # the common case, as the generic path below gives it
        return value if math.isfinite(value) and abs(value) <= PLOT_MAX else None
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and abs(v) <= PLOT_MAX else None


# --------------------------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------------------------


def _cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], list[Mapping[str, Any]]]:
    """The rows of each (layer, module) cell of the heat maps."""
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        layer, module = r.get("layer"), r.get("module")
        if layer is None or module is None:
            continue
        groups.setdefault((int(layer), str(module)), []).append(r)
    return groups


def _layer_module_grid(
    rows: Sequence[Mapping[str, Any]] | dict[tuple[int, str], list[Mapping[str, Any]]],
    cell: Any,
) -> tuple[list[int], list[str], list[list[float]]] | None:
    """Layers x modules grid of ``cell(rows_of_that_cell)`` (NaN where None); None if empty.
    ``rows``: the rows, or :func:`_cells` of them (grouped once for both heat maps)."""
    groups = rows if isinstance(rows, dict) else _cells(rows)
    if not groups:
        return None
    layers = sorted({lay for lay, _ in groups})
    values = {key: cell(group) for key, group in groups.items()}
    # modules with no value in any layer (e.g. norms in the angle map) get no column
    modules = sorted({m for (_, m), v in values.items() if v is not None}, key=module_sort_key)
    if not modules:
        return None
    grid = []
    for lay in layers:
        line = []
        for m in modules:
            v = values.get((lay, m))
            line.append(math.nan if v is None else v)
        grid.append(line)
    return layers, modules, grid


def _weighted_uf(rows: Sequence[Mapping[str, Any]]) -> float | None:
    num = den = 0.0
    for r in rows:
        v, w = _finite(r.get("unchanged_fraction")), _finite(r.get("numel"))
        if v is not None and w is not None:
            num += w * v
            den += w
    return num / den if den > 0 else None


def _mean_max_angle(rows: Sequence[Mapping[str, Any]]) -> float | None:
    vals = [
        v
        for r in rows
        for v in (_finite(r.get("angle_left_max")), _finite(r.get("angle_right_max")))
        if v is not None
    ]
    return math.fsum(vals) / len(vals) if vals else None


def _save(text: str, path: Path, written: list[Path]) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(text.encode("utf-8"))
    written.append(path)


def _heatmap(
    grid: tuple[list[int], list[str], list[list[float]]],
    title: str,
    label: str,
    ramp: svg.Ramp,
    vmin: float,
    vmax: float,
    fmt: str,
) -> str:
    layers, modules, values = grid
    return svg.heatmap(
        title,
        [str(x) for x in layers],
        modules,
        values,
        ramp,
        vmin,
        vmax,
        label,
        fmt=fmt,
        xlabel="module",
        ylabel="layer",
    )


def _bins(n: int) -> int:
    return int(min(50, max(5, math.ceil(math.sqrt(n)))))


def _edges(values: Sequence[float], bins: int) -> list[float]:
    """``bins`` equal bins over the values' range (half a unit each side when they are all
    equal), as numpy.histogram_bin_edges gives them."""
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return [lo + (hi - lo) * i / bins for i in range(bins)] + [hi]


def _counts(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Values per bin; the last bin includes its right edge."""
    bins = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    counts = [0] * bins
    for v in values:
        if lo <= v <= hi:
            counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
    return counts


def _histogram(
    series: Sequence[tuple[str, list[float], str]],
    title: str,
    xlabel: str,
    legend: bool,
) -> str:
    """Bars of each ``(label, values, colour)`` on shared bins, overlaid (translucent when
    several)."""
    every = [v for _, vals, _ in series for v in vals]
    edges = _edges(every, _bins(len(every)))
    counts = [_counts(vals, edges) for _, vals, _ in series]
    top = max(max(c) for c in counts)
    opacity = 0.6 if len(series) > 1 else 1.0
    keys = [svg.Key(lab, col, kind="patch", opacity=opacity) for lab, _, col in series]
    chart = svg.Chart(
        title,
        xlabel,
        "matrices",
        svg.Scale.fit([edges[0], edges[-1]]),
        svg.Scale(0.0, top * 1.05, integer=True),
        legend=keys if legend else (),
    )
    for (_, _, col), c in zip(series, counts, strict=True):
        chart.bars(edges, c, col, opacity)
    return chart.to_svg()


def plot_diff(rows: list[dict], out_dir: Path) -> list[Path]:
    """Plots of a diff table (DESIGN "Outputs": per-layer by module heat maps, angles, ranks).

    Writes SVG files, when their data exist: ``heatmap_unchanged.svg`` (layer x module,
    numel-weighted bf16 unchanged fraction, DESIGN "Unchanged fraction"), ``heatmap_angle.svg``
    (layer x module, mean over matrices of the max principal angles of the top-K left and
    right subspaces, degrees, DESIGN "Subspace rotation"), ``stable_rank_hist.svg``
    (srank(dW) of the 2-D matrices), ``angle_hist.svg`` (per-matrix max angles, left and
    right), and ``unchanged_vs_update.svg`` (unchanged fraction against ||dW||_F / ||W0||_F
    per tensor, log x axis: DESIGN "Comparing methods"). Returns the paths written.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    rows = list(rows)
    cells = _cells(rows)
    grid = _layer_module_grid(cells, _weighted_uf)
    if grid is not None:
        text = _heatmap(
            grid,
            "Unchanged fraction (bf16 rule) by layer and module",
            "unchanged fraction",
            svg.FRACTION,
            0.0,
            1.0,
            ".2f",
        )
        _save(text, out_dir / "heatmap_unchanged.svg", written)

    grid = _layer_module_grid(cells, _mean_max_angle)
    if grid is not None:
        vmax = max(v for line in grid[2] for v in line if math.isfinite(v))
        text = _heatmap(
            grid,
            "Max principal angle (mean of left and right), degrees",
            "degrees",
            svg.ANGLE,
            0.0,
            vmax,
            ".2g",
        )
        _save(text, out_dir / "heatmap_angle.svg", written)

    sr = [v for v in (_finite(r.get("stable_rank")) for r in rows) if v is not None]
    if sr:
        text = _histogram(
            [("stable rank", sr, BLUE)],
            f"Stable rank of the update ({len(sr)} matrices)",
            "stable rank of dW = ||dW||_F^2 / ||dW||_2^2",
            legend=False,
        )
        _save(text, out_dir / "stable_rank_hist.svg", written)

    left = [v for v in (_finite(r.get("angle_left_max")) for r in rows) if v is not None]
    right = [v for v in (_finite(r.get("angle_right_max")) for r in rows) if v is not None]
    if left or right:
        series = [(lab, vals, col) for lab, vals, col in
                  (("left (U)", left, BLUE), ("right (V)", right, ORANGE)) if vals]  # fmt: skip
        text = _histogram(
            series,
            "Subspace rotation per matrix",
            "max principal angle of the top-K subspaces, degrees",
            legend=True,
        )
        _save(text, out_dir / "angle_hist.svg", written)

    points: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        x, y = _finite(r.get("relative_change")), _finite(r.get("unchanged_fraction"))
        if x is None or y is None or x <= 0:
            continue
        xs, ys = points.setdefault(str(r.get("module")), ([], []))
        xs.append(x)
        ys.append(y)
    if points:
        modules = sorted(points, key=module_sort_key)
        colors = svg.palette(len(modules))
        keys = [
            svg.Key(m, colors[i % len(colors)], kind="dots", opacity=0.75)
            for i, m in enumerate(modules)
        ]
        chart = svg.Chart(
            "Unchanged fraction vs relative update size, per tensor",
            "relative update ||dW||_F / ||W0||_F",
            "unchanged fraction (bf16 rule)",
            svg.Scale.fit((x for xs, _ in points.values() for x in xs), log=True),
            svg.Scale(-0.02, 1.02),
            plot_w=540,
            plot_h=340,
            legend=keys,
        )
        for key, m in zip(keys, modules, strict=True):
            chart.dots(*points[m], key.color, r=2.5, opacity=0.75)
        _save(chart.to_svg(), out_dir / "unchanged_vs_update.svg", written)
    return written


# --------------------------------------------------------------------------------------------
# trajectory
# --------------------------------------------------------------------------------------------


def _series(steps: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in steps:
        y = _finite(s.get(key))
        if y is not None and s.get("step") is not None:
            xs.append(float(s["step"]))
            ys.append(y)
    return xs, ys


def _line_plot(
    steps: Sequence[Mapping[str, Any]],
    by_module: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str,
    ylabel: str,
    title: str,
    hline: tuple[float, str] | None = None,
    lock_at: float | None = None,
    ylim: tuple[float, float] | None = None,
    legend: bool = True,
) -> str | None:
    """Mean ``key`` over steps (thick, with dots) and, when there are several module types,
    one thin line per type; ``hline``: (value, label) of a dashed reference line; ``lock_at``:
    the lock step, dotted. The y axis is log10 when ``ylim`` is None, no legend is asked for
    and every value is positive (``||dW_t||_F``). None when there is no value."""
    xs, ys = _series(steps, key)
    if not xs:
        return None
    lines: list[tuple[str, list[float], list[float]]] = []
    if len(by_module) > 1:
        for module in sorted(by_module, key=module_sort_key):
            mx, my = _series(by_module[module], key)
            if mx:
                lines.append((module, mx, my))
    colors = svg.palette(len(by_module))
    keys = [svg.Key(m, colors[i % len(colors)], width=1.3, opacity=0.8)
            for i, (m, _, _) in enumerate(lines)]  # fmt: skip
    keys.append(svg.Key("mean, all matrices", "black", width=3.0, dot=2.5))
    every_x = xs + [x for _, mx, _ in lines for x in mx]
    every_y = ys + [y for _, _, my in lines for y in my]
    if hline is not None:
        every_y.append(hline[0])
        keys.append(svg.Key(hline[1], RED, dash="dashed"))
    if lock_at is not None:
        every_x.append(lock_at)
        keys.append(svg.Key(f"lock step {lock_at}", GREEN, width=2.0, dash="dotted"))
    log = ylim is None and not legend and all(y > 0 for y in every_y)
    chart = svg.Chart(
        title,
        "step",
        ylabel,
        svg.Scale.fit(every_x, integer=True),
        svg.Scale(*ylim) if ylim else svg.Scale.fit(every_y, log=log),
        plot_w=540,
        plot_h=340,
        legend=keys if legend else (),
    )
    for (_, mx, my), k in zip(lines, keys[: len(lines)], strict=True):
        chart.line(mx, my, k.color, width=1.3, opacity=0.8)
    if hline is not None:
        chart.hline(hline[0], RED, width=1.5, dash="dashed")
    if lock_at is not None:
        chart.vline(lock_at, GREEN, width=2.0, dash="dotted")
    chart.line(xs, ys, "black", width=3.0, dot=2.5)
    return chart.to_svg()


def plot_trajectory(rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Plots of a trajectory (DESIGN "Trajectory" and "Subspace locking").

    Writes SVG files, when their data exist: ``sim_k.svg`` (mean ``Sim_K(t, t_end)`` over
    matrices and per module type, the lock threshold and the lock step), ``stable_rank.svg``
    (mean srank(dW_t) with the ``K`` line), ``update_norm.svg`` (model-wide ``||dW_t||_F``,
    log y axis when all positive) and ``hill_alpha.svg`` (mean Hill tail index).
    ``summary`` is :func:`summarize_trajectory`'s output (or a dict containing its keys);
    missing keys are recomputed from ``rows``. Returns the paths written.
    """
    out_dir = Path(out_dir)
    rows = list(rows)
    summary = dict(summary or {})
    if "steps" not in summary or "steps_by_module" not in summary:
        k = int(summary.get("k", 16))
        thr = float(summary.get("lock_threshold", 0.9))
        fresh = summarize_trajectory(rows, k=k, lock_threshold=thr) if rows else {}
        for key, value in fresh.items():
            summary.setdefault(key, value)
    steps = summary.get("steps") or []
    by_module = summary.get("steps_by_module") or {}
    lock = summary.get("lock") or {}
    k = summary.get("k", lock.get("k", 16))
    thr = summary.get("lock_threshold", lock.get("threshold", 0.9))
    lock_at = lock.get("lock_step")
    written: list[Path] = []
    text = _line_plot(
        steps, by_module, "sim_k_mean", "Sim_K(t, t_end)", f"Sim_K, K = {k}",
        hline=(thr, f"threshold {thr:g}"), lock_at=lock_at, ylim=(-0.02, 1.05),
    )  # fmt: skip
    if text is not None:
        _save(text, out_dir / "sim_k.svg", written)

    text = _line_plot(
        steps, by_module, "stable_rank_mean", "mean stable rank of dW_t", "Stable rank",
        hline=(k, f"K = {k}"), lock_at=lock_at,
    )  # fmt: skip
    if text is not None:
        _save(text, out_dir / "stable_rank.svg", written)

    text = _line_plot(
        steps, {}, "frobenius_delta", "||dW_t||_F (all matrices)", "Update norm", legend=False
    )
    if text is not None:
        _save(text, out_dir / "update_norm.svg", written)

    text = _line_plot(
        steps, by_module, "hill_alpha_mean", "Hill tail index alpha", "Hill alpha of dW_t"
    )
    if text is not None:
        _save(text, out_dir / "hill_alpha.svg", written)
    return written
