"""``report.md`` / ``report.html`` and the plots of ``paramgeom reproduce``.

Built with the same document blocks as the diff and trajectory reports
(:mod:`paramgeom.report.render`); every number is formatted from the summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paramgeom.report.render import _H, _P, _Img, _List, _Table, _write
from paramgeom.reproduce.plan import GUARD_ACTIONS, METHODS
from paramgeom.reproduce.table import Row, mean_sd

__all__ = ["plot_all", "write_report"]

COLORS = {"opd": "#1b6ca8", "sft": "#c0392b", "rlvr": "#27ae60"}


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def _method_of(run: str) -> str:
    return run.split("-", 1)[0]


def plot_all(s: dict[str, Any], out: Path) -> list[Path]:
    """Sim_K and stable rank over training per method, accuracy curves, unchanged fraction
    against update size for every run, per-layer x module unchanged heat maps, guardrail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paramgeom.report.tables import read_table

    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    runs = s["runs"]
    main = [f"{m}-s{sd}" for sd in s["seeds"] for m in METHODS]
    for key, ylabel, name in (
        ("sim_k_mean", f"Sim_{s['k_lock']}(t, t_end)", "sim_k.png"),
        ("stable_rank_mean", "mean stable rank of dW_t", "stable_rank.png"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for n in main:
            steps = runs[n]["trajectory_steps"]
            xs = [p["step"] / s["steps"] for p in steps]
            ax.plot(
                xs,
                [p.get(key) for p in steps],
                color=COLORS[_method_of(n)],
                marker=".",
                alpha=0.8,
                label=n,
            )
        if key == "sim_k_mean":
            ax.axhline(0.9, color="0.5", lw=0.8, ls="--")
        else:
            ax.axhline(s["k_lock"], color="0.5", lw=0.8, ls="--")
        ax.set_xlabel("fraction of training")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, ncol=2)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for n, r in sorted(runs.items()):
        if "guard" in n:
            continue
        ev = r["evals"]
        style = "-" if n in main else ":"
        ax.plot(
            [e[0] for e in ev],
            [e[1] for e in ev],
            style,
            color=COLORS[_method_of(n)],
            alpha=0.85,
            label=n,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=6, ncol=3)
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for n, curve in sorted(s["curves"].items()):
        xs = [c["rel_update"] for c in curve[1:]]
        ys = [100 * c["unchanged"] for c in curve[1:]]
        ax.plot(
            xs,
            ys,
            "-" if n in main else ":",
            color=COLORS[_method_of(n)],
            marker=".",
            ms=3,
            alpha=0.7,
            label=n if n in main else None,
        )
    ax.axvline(s["matched_budget"]["rel_update"], color="0.5", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("||dW_t|| / ||W0|| (attention/MLP matrices)")
    ax.set_ylabel("unchanged fraction (%)")
    ax.legend(fontsize=7, ncol=2)
    save(fig, "unchanged_vs_update.png")

    # Per-layer x module unchanged heat maps of the three methods (first seed).
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.6), sharey=True, layout="constrained")
    analysis = Path(s["output"]) / "analysis" / s["size"]
    im = None
    for ax, m in zip(axes, METHODS, strict=True):
        rows = read_table(analysis / f"{m}-s{s['seeds'][0]}" / "diff" / "tensors.parquet")
        rows = [r for r in rows if r["layer"] is not None]
        mods = [
            x
            for x in ("q", "k", "v", "o", "gate", "up", "down")
            if any(r["module"] == x for r in rows)
        ]
        layers = sorted({r["layer"] for r in rows})
        grid = [[math.nan] * len(mods) for _ in layers]
        for r in rows:
            if r["module"] in mods:
                grid[layers.index(r["layer"])][mods.index(r["module"])] = (
                    100 * r["unchanged_fraction"]
                )
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(mods)), mods)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_title(m.upper())
        ax.set_xlabel("module")
    axes[0].set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="unchanged (%)")
    fig.savefig(out / "heatmap_unchanged.png", dpi=110)
    plt.close(fig)
    written.append(out / "heatmap_unchanged.png")

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    arms = s["guardrail"]["arms"]
    names = ["log"] + list(GUARD_ACTIONS)
    for i, a in enumerate(names):
        vals = [v for v in arms[a]["accuracy_final"]["values"] if v is not None]
        ax.scatter([i] * len(vals), vals, color="#1b6ca8")
        if vals:
            ax.hlines(sum(vals) / len(vals), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(names)), ["plain OPD" if a == "log" else a for a in names])
    ax.set_ylabel("final held-out accuracy")
    save(fig, "guardrail.png")
    return written


def _rows_table(rows: Sequence[Row]) -> _Table:
    body = []
    for r in rows:
        verdict = "n/a" if r.agrees is None else ("agrees" if r.agrees else "disagrees")
        body.append(
            [
                r.diagnostic,
                *(f"{p} / {o}" for p, o in zip(r.paper, r.ours, strict=True)),
                verdict,
                r.why or r.claim,
            ]
        )
    return _Table(
        [
            "Diagnostic",
            "OPD (paper / ours)",
            "SFT (paper / ours)",
            "RLVR (paper / ours)",
            "Verdict",
            "Why / claim tested",
        ],
        body,
    )


def _verdict(rows: Sequence[Row]) -> list[Any]:
    """Which of the paper's claims survive in our runs, in words."""
    kept = [r.diagnostic for r in rows if r.agrees]
    lost = [f"{r.diagnostic}: {r.why}" for r in rows if r.agrees is False]
    out: list[Any] = [
        _P(
            f"Claims that hold in our runs ({len(kept)} of {len(kept) + len(lost)}): "
            + ("; ".join(kept) if kept else "none")
            + "."
        )
    ]
    if lost:
        out.append(_P(f"Claims that do not hold here ({len(lost)}):"))
        out.append(_List(lost))
    return out


def write_report(
    s: dict[str, Any],
    rows: Sequence[Row],
    out: Path,
    plots: Sequence[Path],
    commands: Sequence[dict],
) -> list[Path]:
    f = s["methods"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    blocks: list[Any] = [
        _P(
            f"Profile {s['profile']}: model {s['size']} (hidden {s['width']}), seeds {seeds}, "
            f"{s['steps']} steps per run, AdamW lr {s['lr']:g}, held-out set of "
            f"{f['opd']['eval_size']} problems. Wall time of this invocation "
            f"{_f(s.get('wall_s'), '.0f')} s ({s['jobs']['run']} jobs run, "
            f"{s['jobs']['reused']} reused from an earlier invocation, {s['jobs']['workers']} "
            "at a time). "
            "Every cell below is computed from this run's own files (summary.json holds "
            "every figure)."
        ),
        _H(2, "Key Results: the paper beside our runs"),
        _P(
            "Paper: arXiv 2606.07082 (Qwen3-8B student, Qwen3-32B teacher). Ours: mean ± sd over "
            "seeds. A row agrees when our figures show the paper's qualitative claim (column "
            "'claim tested'); where they do not, the sentence says what we measured."
        ),
        _rows_table(rows),
        *_verdict(rows),
        _H(2, "Choices stated"),
        _List(
            [
                f"K of Sim_K and of the lock rule = width / 32 = {s['k_lock']} (the paper's K = 16 "
                "is 1/256 of Qwen3-8B's width 4096: at our width that leaves less than one "
                "dimension, and our updates' stable rank is a few units).",
                f"Subspace rotation over the top-{s['k_rotation']} singular subspaces (width / 8, "
                "the paper's 512 of 4096).",
                "Lock: the first saved step from which Sim_K(t, t_end) >= 0.9 and the mean "
                "stable rank < K hold at every later step (the final step alone never counts).",
                "Unchanged: both checkpoints in bf16, |w1 - w0| <= 1e-3 max(|w0|, |w1|), over "
                "every tensor (the matched-budget rows use the attention/MLP matrices of the "
                "trajectory).",
            ]
        ),
    ]
    mb = s["matched_budget"]
    body = []
    for m in METHODS:
        x = mb["methods"][m]
        body.append(
            [
                m.upper(),
                _f(x["rel_update_final"]["mean"]),
                mean_sd(x["unchanged_pct_final"], ".1f", "%"),
                mean_sd(x["unchanged_pct_at_rel_update"], ".1f", "%"),
                mean_sd(x["unchanged_pct_at_gain"], ".1f", "%"),
            ]
        )
    blocks += [
        _H(2, "Matched update budgets"),
        _P(
            "At equal learning rate the methods move the weights by different amounts, and the "
            "unchanged fraction falls with the update size whatever the method. Here each "
            "method's unchanged fraction over the attention/MLP matrices (the trajectory's "
            "population; the Key Results row above counts every tensor) is read off its own "
            "trajectory at the same relative update size ||dW||/||W0|| = "
            f"{_f(mb['rel_update'])} (the smallest final size of any main run) and at the "
            f"same held-out accuracy gain ({_f(mb['accuracy_gain'], '.3f')}; n/a when some run "
            "did not improve)."
        ),
        _Table(
            [
                "Method",
                "final ||dW||/||W0||",
                "unchanged at the end (equal lr)",
                "unchanged at matched size",
                "unchanged at matched gain",
            ],
            body,
        ),
        _Img("unchanged_vs_update.png", "Unchanged fraction against update size, every run"),
    ]
    body = []
    for m in METHODS:
        x = f[m]
        body.append(
            [
                m.upper(),
                f"{_f(x['accuracy_base']['mean'], '.3f')}",
                mean_sd(x["accuracy_final"], ".3f"),
                ", ".join(_f(v, ".3f") for v in x["accuracy_final"]["values"]),
                ", ".join(_f(v, ".1f") for v in x["unchanged_pct"]["values"]),
                ", ".join(_f(v, ".3g") for v in x["rotation_deg"]["values"]),
            ]
        )
    blocks += [
        _H(2, "Seeds and spread"),
        _Table(
            [
                "Method",
                "start accuracy",
                "final accuracy",
                "per seed",
                "unchanged % per seed",
                "rotation ° per seed",
            ],
            body,
        ),
        _Img("accuracy.png", "Held-out accuracy over training (dotted: variants, projections)"),
        _Img("sim_k.png", "Sim_K(t, t_end) over training per run"),
        _Img("stable_rank.png", "Mean stable rank of dW_t per run (dashed: K)"),
        _Img("heatmap_unchanged.png", "Unchanged fraction by layer and module, first seed"),
    ]
    body = []
    for n, v in s["variants"].items():
        lock = v["lock"]
        body.append(
            [
                n,
                f"{_f(v['unchanged_pct'], '.1f')}%",
                _f(v["rotation_deg"]),
                _f(v["rel_update"]),
                _f(v["dim_initial"]),
                _f(v["dim_final"]),
                "no lock" if lock["step"] is None else f"{lock['fraction']:.0%}",
                _f(v["accuracy_final"], ".3f"),
            ]
        )
    sim_rows = []
    for m in METHODS:
        x = s["similarity"][m]
        sim_rows.append(
            [
                m.upper(),
                _f(x["seed_pairs"]),
                _f(x["keep50"]),
                _f(x.get("mix50")),
                _f(x.get("offpolicy")),
            ]
        )
    blocks += [
        _H(2, "Variants: token sparsification, off-policy rollouts, objective mixing"),
        _Table(
            [
                "Run",
                "unchanged",
                "rotation °",
                "||dW||/||W0||",
                "srank first",
                "srank final",
                "lock",
                "final accuracy",
            ],
            body,
        ),
        _P(
            f"Sim_{s['k_lock']} between final update subspaces (mean over matrices): seed to "
            "seed is the noise floor each variant is measured against."
        ),
        _Table(
            ["Method", "seed vs seed", "vs keep 50%", "vs OPD+RLVR mix", "vs off-policy"], sim_rows
        ),
    ]
    body = []
    for suff in (s["sufficiency"], s.get("sufficiency_width")):
        for m in METHODS if suff else ():
            x = suff[m]
            body.append(
                [
                    f"top-{x['k']}",
                    m.upper(),
                    _f(x["accuracy_base"], ".3f"),
                    _f(x["accuracy_free"], ".3f"),
                    _f(x["accuracy_projected"], ".3f"),
                    _f(x["gain_retained"], ".2f"),
                    _f(x["two_se"], ".3f"),
                    "preserved" if x["preserved"] else "degraded",
                ]
            )
    blocks += [
        _H(2, "Functional sufficiency"),
        _P(
            "Each run retrained from the same start with every weight matrix's gradient "
            "projected onto the top-k right singular subspace of the free run's dW at "
            f"{s['sufficiency']['opd']['at']:.0%} of training (g <- g V V^T): the paper's k = 16, "
            f"and k = K = {s['k_lock']} (width / 32), since top-16 is an eighth of a width-128 "
            "space and constrains little."
        ),
        _Table(
            ["k", "Method", "start", "free", "projected", "gain retained", "2 SE", "verdict"], body
        ),
    ]
    g = s["guardrail"]
    rule = g["rule"]
    body = []
    for a in ["log", *GUARD_ACTIONS]:
        x = g["arms"][a]
        body.append(
            [
                "plain OPD (log)" if a == "log" else a,
                mean_sd(x["accuracy_final"], ".3f"),
                _f(x["accuracy_best"]["mean"], ".3f"),
                _f(x["drawdown"]["mean"], ".3f"),
                ", ".join("-" if v is None else str(v) for v in x["fired"]),
                ""
                if a == "log"
                else f"{_f(x['delta_vs_plain'], '+.3f')} (2 SE {_f(x['two_se'], '.3f')})",
                "" if a == "log" else ("improves" if x["improves"] else "no improvement"),
            ]
        )
    recs = [r for r in g["plain_opd_records"] if r["fraction"] <= rule["overlock_fraction"] + 1e-9]
    calib = ", ".join(
        f"{_f(r['stable_rank'], '.3g')} (seed {r['seed']}, {r['fraction']:.0%})" for r in recs
    )
    blocks += [
        _H(2, "Guardrail experiment (the paper's missing intervention)"),
        _P(
            f"Rule: the GeometryMonitor (every {rule['every']} steps) flags over-locking when "
            f"the mean stable rank of dW falls below {rule['overlock_rank']:g} (1.5 K, K = "
            f"{rule['k']}) before {rule['overlock_fraction']:.0%} of training; the action then "
            "fires once. Plain OPD's own monitor records in that window (stable rank): "
            f"{calib or 'none'}."
        ),
        _Table(
            [
                "Arm",
                "final accuracy",
                "best accuracy",
                "max drawdown",
                "fired at step (per seed)",
                "vs plain OPD",
                "verdict",
            ],
            body,
        ),
        _Img("guardrail.png", "Final held-out accuracy per guardrail arm (dots: seeds)"),
    ]
    body = []
    for size, fig in s["scaling"].items():
        for m in METHODS:
            x = fig[m]
            body.append(
                [
                    size,
                    m.upper(),
                    f"{_f(x['unchanged_pct'], '.1f')}%",
                    _f(x["rotation_deg"]),
                    _f(x["rel_update"]),
                    _f(x["dim_final"]),
                    "no lock" if x["lock_fraction"] is None else f"{x['lock_fraction']:.0%}",
                ]
            )
    blocks += [
        _H(2, "Scaling look"),
        _Table(
            ["Size", "Method", "unchanged", "rotation °", "||dW||/||W0||", "srank final", "lock"],
            body,
        ),
    ]
    if len(s["scaling"]) < 2:
        blocks.append(
            _P(
                "One model size in this profile: no trend can be stated (the full run, "
                "without --quick, adds the tiny and small sizes)."
            )
        )
    blocks += [_H(2, "Rerun any single step")]
    blocks.append(_List([f"{c['id']}: {c['command']}" for c in commands]))
    for note in s.get("notes", []):
        blocks.append(_P(note))
    return _write("paramgeom reproduce", blocks, out)
