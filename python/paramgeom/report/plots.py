"""PNG plots of a diff table and of a trajectory (DESIGN.md "Checkpoints", Outputs).

Diff: per-layer by module heat maps of the unchanged fraction and of the principal angles,
histograms of the stable rank and of the max angles, and the unchanged fraction against the
relative update size per tensor (the unchanged fraction falls with update size whatever the
method: DESIGN "Comparing methods"). Trajectory: ``Sim_K(t, t_end)`` with the lock threshold and
lock step, the mean stable rank with the ``K`` line, ``||dW_t||_F`` and the Hill index.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly: no
pyplot, so no window ever opens, no global backend is switched in the caller's process (a
notebook keeps its own), and no figure leaks between calls. Styles are reset to matplotlib's
defaults for a deterministic look. A plot whose data are absent (no 2-D matrices, no layers,
no angles, ...) is skipped, not an error. Each file is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from paramgeom.report.aggregate import module_sort_key, summarize_trajectory
from paramgeom.report.tables import atomic_write

__all__ = ["plot_diff", "plot_trajectory"]

DPI = 120
_RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": False,
    "svg.hashsalt": "paramgeom",
}


def _finite(value: Any) -> float | None:
    if type(value) is float:  # the common case, as the generic path below gives it
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# Margins in inches (left, right, bottom, top): fixed, not solved by a layout engine, which
# measured every tick label twice and took most of a diff's plotting time (2.3 s of 2.4 s on
# a 50 MB pair's five plots before; 1.3 s in all after).
MARGINS = (0.8, 0.3, 0.6, 0.4)


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    left, right, bottom, top = MARGINS
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, written: list[Path]) -> None:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=DPI, metadata={"Software": "paramgeom"})
    written.append(path)


def _style() -> Any:
    import matplotlib
    import matplotlib.style

    ctx = matplotlib.style.context("default")
    rc = matplotlib.rc_context(_RC)

    class _Both:
        def __enter__(self) -> None:
            ctx.__enter__()
            rc.__enter__()

        def __exit__(self, *exc: Any) -> None:
            rc.__exit__(*exc)
            ctx.__exit__(*exc)

    return _Both()


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


def _heatmap(
    grid: tuple[list[int], list[str], list[list[float]]],
    title: str,
    label: str,
    cmap_name: str,
    vmin: float,
    vmax: float,
    fmt: str,
) -> Any:
    import matplotlib
    import numpy as np

    layers, modules, values = grid
    data = np.ma.masked_invalid(np.array(values, dtype=float))
    fig = _new_figure(min(2.5 + 0.7 * len(modules), 24.0), min(1.8 + 0.22 * len(layers), 40.0))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="#d9d9d9")
    if vmax <= vmin:
        vmax = vmin + 1.0
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(modules)), labels=modules)
    step = max(1, math.ceil(len(layers) / 60))
    ax.set_yticks(range(0, len(layers), step), labels=[str(x) for x in layers[::step]])
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    if len(layers) * len(modules) <= 240:
        mid = vmin + 0.5 * (vmax - vmin)
        for i, line in enumerate(values):
            for j, v in enumerate(line):
                if math.isfinite(v):
                    ax.text(
                        j,
                        i,
                        format(v, fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if v > mid else "white",
                    )
    return fig


def plot_diff(rows: list[dict], out_dir: Path) -> list[Path]:
    """Plots of a diff table (DESIGN "Outputs": per-layer by module heat maps, angles, ranks).

    Writes, when their data exist: ``heatmap_unchanged.png`` (layer x module, numel-weighted
    bf16 unchanged fraction, DESIGN "Unchanged fraction"), ``heatmap_angle.png`` (layer x
    module, mean over matrices of the max principal angles of the top-K left and right
    subspaces, degrees, DESIGN "Subspace rotation"), ``stable_rank_hist.png`` (srank(dW) of
    the 2-D matrices), ``angle_hist.png`` (per-matrix max angles, left and right), and
    ``unchanged_vs_update.png`` (unchanged fraction against ||dW||_F / ||W0||_F per tensor,
    log x axis: DESIGN "Comparing methods"). Returns the paths written.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    rows = list(rows)
    cells = _cells(rows)
    with _style():
        grid = _layer_module_grid(cells, _weighted_uf)
        if grid is not None:
            fig = _heatmap(
                grid,
                "Unchanged fraction (bf16 rule) by layer and module",
                "unchanged fraction",
                "viridis",
                0.0,
                1.0,
                ".2f",
            )
            _save(fig, out_dir / "heatmap_unchanged.png", written)

        grid = _layer_module_grid(cells, _mean_max_angle)
        if grid is not None:
            vmax = max(v for line in grid[2] for v in line if math.isfinite(v))
            fig = _heatmap(
                grid,
                "Max principal angle (mean of left and right), degrees",
                "degrees",
                "magma",
                0.0,
                vmax,
                ".2g",
            )
            _save(fig, out_dir / "heatmap_angle.png", written)

        sr = [v for v in (_finite(r.get("stable_rank")) for r in rows) if v is not None]
        if sr:
            fig = _new_figure(6.0, 4.0)
            ax = fig.add_subplot()
            ax.hist(sr, bins=_bins(len(sr)), color="#4c72b0", edgecolor="white")
            ax.set_xlabel("stable rank of dW = ||dW||_F^2 / ||dW||_2^2")
            ax.set_ylabel("matrices")
            ax.set_title(f"Stable rank of the update ({len(sr)} matrices)")
            _save(fig, out_dir / "stable_rank_hist.png", written)

        left = [v for v in (_finite(r.get("angle_left_max")) for r in rows) if v is not None]
        right = [v for v in (_finite(r.get("angle_right_max")) for r in rows) if v is not None]
        if left or right:
            import numpy as np

            fig = _new_figure(6.0, 4.0)
            ax = fig.add_subplot()
            edges = np.histogram_bin_edges(left + right, bins=_bins(len(left) + len(right)))
            if left:
                ax.hist(left, bins=edges, alpha=0.6, label="left (U)", color="#4c72b0")
            if right:
                ax.hist(right, bins=edges, alpha=0.6, label="right (V)", color="#dd8452")
            ax.set_xlabel("max principal angle of the top-K subspaces, degrees")
            ax.set_ylabel("matrices")
            ax.set_title("Subspace rotation per matrix")
            ax.legend()
            _save(fig, out_dir / "angle_hist.png", written)

        points: dict[str, tuple[list[float], list[float]]] = {}
        for r in rows:
            x, y = _finite(r.get("relative_change")), _finite(r.get("unchanged_fraction"))
            if x is None or y is None or x <= 0:
                continue
            xs, ys = points.setdefault(str(r.get("module")), ([], []))
            xs.append(x)
            ys.append(y)
        if points:
            import numpy as np

            fig = _new_figure(6.5, 4.5)
            ax = fig.add_subplot()
            colors = _palette(len(points))
            for i, module in enumerate(sorted(points, key=module_sort_key)):
                # As arrays: a list of 50,000 floats went through numpy.ma element by
                # element (3 s); the same values as an array draw the same points.
                xs, ys = (np.asarray(v, dtype=float) for v in points[module])
                ax.scatter(xs, ys, s=12, alpha=0.75, color=colors(i), label=module)
            ax.set_xscale("log")
            # Minor ticks of a log axis spanning less than a decade get labels of their own
            # that run into each other; the major ticks (with numbers) are enough.
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("relative update ||dW||_F / ||W0||_F")
            ax.set_ylabel("unchanged fraction (bf16 rule)")
            ax.set_title("Unchanged fraction vs relative update size, per tensor")
            ax.legend(fontsize=7, ncols=2 if len(points) > 6 else 1)
            _save(fig, out_dir / "unchanged_vs_update.png", written)
    return written


def _palette(n: int) -> Any:
    """Colour of the i-th series: tab10 when it suffices (higher contrast), else tab20."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return lambda i: cmap(i % cmap.N)


def _bins(n: int) -> int:
    return int(min(50, max(5, math.ceil(math.sqrt(n)))))


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
) -> Any | None:
    xs, ys = _series(steps, key)
    if not xs:
        return None

    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    colors = _palette(len(by_module))
    for i, module in enumerate(sorted(by_module, key=module_sort_key)):
        mx, my = _series(by_module[module], key)
        if mx and len(by_module) > 1:
            ax.plot(mx, my, lw=1.0, alpha=0.8, color=colors(i), label=module)
    ax.plot(xs, ys, lw=2.4, color="black", marker="o", ms=3, label="mean, all matrices")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def plot_trajectory(rows: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    """Plots of a trajectory (DESIGN "Trajectory" and "Subspace locking").

    Writes, when their data exist: ``sim_k.png`` (mean ``Sim_K(t, t_end)`` over matrices and
    per module type, the lock threshold and the lock step), ``stable_rank.png`` (mean
    srank(dW_t) with the ``K`` line), ``update_norm.png`` (model-wide ``||dW_t||_F``) and
    ``hill_alpha.png`` (mean Hill tail index). ``summary`` is :func:`summarize_trajectory`'s
    output (or a dict containing its keys); missing keys are recomputed from ``rows``.
    Returns the paths written.
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
    with _style():
        fig = _line_plot(steps, by_module, "sim_k_mean", "Sim_K(t, t_end)", f"Sim_K, K = {k}")
        if fig is not None:
            ax = fig.axes[0]
            ax.axhline(thr, ls="--", color="#c44e52", lw=1.2, label=f"threshold {thr:g}")
            if lock_at is not None:
                ax.axvline(lock_at, ls=":", color="#55a868", lw=1.6, label=f"lock step {lock_at}")
            ax.set_ylim(-0.02, 1.05)
            ax.legend(fontsize=7)
            _save(fig, out_dir / "sim_k.png", written)

        fig = _line_plot(
            steps, by_module, "stable_rank_mean", "mean stable rank of dW_t", "Stable rank"
        )
        if fig is not None:
            ax = fig.axes[0]
            ax.axhline(k, ls="--", color="#c44e52", lw=1.2, label=f"K = {k}")
            if lock_at is not None:
                ax.axvline(lock_at, ls=":", color="#55a868", lw=1.6, label=f"lock step {lock_at}")
            ax.legend(fontsize=7)
            _save(fig, out_dir / "stable_rank.png", written)

        fig = _line_plot(steps, {}, "frobenius_delta", "||dW_t||_F (all matrices)", "Update norm")
        if fig is not None:
            _, ys = _series(steps, "frobenius_delta")
            if all(y > 0 for y in ys):
                fig.axes[0].set_yscale("log")
            _save(fig, out_dir / "update_norm.png", written)

        fig = _line_plot(
            steps, by_module, "hill_alpha_mean", "Hill tail index alpha", "Hill alpha of dW_t"
        )
        if fig is not None:
            fig.axes[0].legend(fontsize=7)
            _save(fig, out_dir / "hill_alpha.png", written)
    return written
