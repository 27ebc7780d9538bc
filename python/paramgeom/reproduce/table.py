"""The paper's Key Results table beside ours, row by row, with a verdict per row.

Each of our cells is formatted from :func:`paramgeom.reproduce.analysis.analyse`'s figures
(nothing typed in). Paper cells are the paper's own (arXiv 2606.07082, Qwen3-8B student,
Qwen3-32B teacher; ``../shared/paper-summary.txt``). A row "agrees" when our figures show the
paper's qualitative claim for that row (stated per row in ``claim``); otherwise one sentence
says what we measured instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paramgeom.reproduce.analysis import ROBUST_LEVEL, SENSITIVE_LEVEL
from paramgeom.reproduce.plan import METHODS

__all__ = ["Row", "key_results", "mean_sd"]

PAPER = {
    "unchanged": ("51.6%", "8.1%", "77.2%"),
    "rotation": ("~1°", ">10°", "<0.5°"),
    "regime": ("relaxed off-principal", "full-space", "sparse principal"),
    "dim_initial": ("high", "high", "low"),
    "dim_locked": ("< 16", "degrades", "already low"),
    "lock": ("~10% of training", "n/a", "n/a"),
    "sparsification": ("high", "low", "high"),
    "composition": ("high", "n/a", "low"),
    "offpolicy": ("high", "n/a", "n/a"),
    "sufficiency": ("preserved", "degraded", "n/a"),
    "drift": ("~1e-4", "~1e-3", "~1e-5"),
}


@dataclass
class Row:
    key: str
    diagnostic: str
    paper: tuple[str, str, str]  # OPD, SFT, RLVR
    ours: tuple[str, str, str]
    values: dict[str, Any]  # the numbers behind our cells, by method
    claim: str
    agrees: bool | None  # None: the paper makes no claim we can test
    why: str


def mean_sd(stat: dict, fmt: str, unit: str = "") -> str:
    """``mean ± sd`` of a figure over seeds (``n/a`` when missing; no sd for one seed)."""
    m, sd = stat.get("mean"), stat.get("sd")
    if m is None:
        return "n/a"
    text = format(m, fmt) + unit
    if sd is not None:
        text += f" ± {format(sd, fmt)}{unit}"
    return text


def _order(values: dict[str, float | None], descending: bool = True) -> list[str]:
    have = {m: v for m, v in values.items() if v is not None}
    return sorted(have, key=lambda m: -have[m] if descending else have[m])


def _order_text(order: list[str], values: dict[str, float | None], fmt: str) -> str:
    return " > ".join(f"{m.upper()} ({format(values[m], fmt)})" for m in order)


def _sufficiency_row(key: str, suff: dict[str, Any]) -> Row:
    cells = []
    for m in METHODS:
        x = suff[m]
        word = "preserved" if x["preserved"] else "degraded"
        cells.append(f"{word} ({x['accuracy_projected']:.1%} vs {x['accuracy_free']:.1%})")
    ok = suff["opd"]["preserved"] and not suff["sft"]["preserved"]
    words = {m: "preserved" if suff[m]["preserved"] else "degraded" for m in METHODS}
    return Row(
        key,
        f"Functional sufficiency (top-{suff['opd']['k']} subspace at {suff['opd']['at']:.0%})",
        PAPER["sufficiency"],
        tuple(cells),
        {m: suff[m]["accuracy_projected"] for m in METHODS},
        "OPD's accuracy preserved under the projection, SFT's degraded",
        ok,
        ""
        if ok
        else f"measured OPD {words['opd']}, SFT {words['sft']} (within two binomial SE of "
        "the free run = preserved).",
    )


def key_results(s: dict[str, Any]) -> list[Row]:
    """The rows of the side-by-side table from a reproduce summary ``s``."""
    f, sims, suff = s["methods"], s["similarity"], s["sufficiency"]
    rows: list[Row] = []
    mean = {
        k: {m: f[m][k]["mean"] for m in METHODS}
        for k in (
            "unchanged_pct",
            "rotation_deg",
            "spectral_drift",
            "rel_update",
            "dim_initial",
            "dim_final",
            "dim_locked",
            "lock_fraction",
        )
    }
    rel = mean["rel_update"]
    size_words = (
        "at equal learning rate the methods move the weights by different amounts "
        f"(||dW||/||W0||: {_order_text(_order(rel), rel, '.3g')})"
    )

    u = mean["unchanged_pct"]
    order = _order(u)
    ok = order == ["rlvr", "opd", "sft"]
    rows.append(
        Row(
            "unchanged",
            "Unchanged parameters (bf16, eta = 1e-3)",
            PAPER["unchanged"],
            tuple(mean_sd(f[m]["unchanged_pct"], ".1f", "%") for m in METHODS),
            u,
            "RLVR > OPD > SFT",
            ok,
            "" if ok else f"we measure {_order_text(order, u, '.1f')}; {size_words}.",
        )
    )

    mb = s["matched_budget"]
    mu = {m: mb["methods"][m]["unchanged_pct_at_rel_update"]["mean"] for m in METHODS}
    order = _order(mu)
    ok = order == ["rlvr", "opd", "sft"]
    rows.append(
        Row(
            "unchanged_matched",
            f"Unchanged at matched update size (attention/MLP ||dW||/||W0|| = "
            f"{mb['rel_update']:.3g})",
            ("(not in the paper)",) * 3,
            tuple(
                mean_sd(mb["methods"][m]["unchanged_pct_at_rel_update"], ".1f", "%")
                for m in METHODS
            ),
            mu,
            "RLVR > OPD > SFT should survive holding the update size fixed",
            ok,
            ""
            if ok
            else f"at equal update size we measure {_order_text(order, mu, '.1f')}"
            + (
                " (the same ordering as at equal learning rate)."
                if order == _order(u)
                else f", not the equal-lr ordering ({_order_text(_order(u), u, '.1f')}): update "
                "size drives the equal-lr comparison."
            ),
        )
    )

    r = mean["rotation_deg"]
    order = _order(r)
    ok = order == ["sft", "opd", "rlvr"]
    rows.append(
        Row(
            "rotation",
            f"Subspace rotation (top-{s['k_rotation']} subspaces, mean max angle)",
            PAPER["rotation"],
            tuple(mean_sd(f[m]["rotation_deg"], ".3g", "°") for m in METHODS),
            r,
            "SFT > OPD > RLVR",
            ok,
            "" if ok else f"we measure {_order_text(order, r, '.3g')}°; {size_words}.",
        )
    )

    reg = s["regimes"]
    ok = all(reg[m] == p for m, p in zip(METHODS, PAPER["regime"], strict=True))
    rows.append(
        Row(
            "regime",
            "Regime (from the two orderings above)",
            PAPER["regime"],
            tuple(reg[m] for m in METHODS),
            reg,
            "OPD between SFT and RLVR on both unchanged fraction and rotation",
            ok,
            ""
            if ok
            else "the unchanged and rotation orderings above do not place the "
            "methods as the paper does.",
        )
    )

    d0 = mean["dim_initial"]
    ok = d0["rlvr"] is not None and all(
        d0["rlvr"] < d0[m] for m in ("opd", "sft") if d0[m] is not None
    )
    rows.append(
        Row(
            "dim_initial",
            "Effective update dimension, initial (stable rank at the first checkpoint)",
            PAPER["dim_initial"],
            tuple(mean_sd(f[m]["dim_initial"], ".3g") for m in METHODS),
            d0,
            "RLVR lowest, OPD and SFT higher",
            ok,
            "" if ok else f"we measure {_order_text(_order(d0), d0, '.3g')}.",
        )
    )

    K = s["k_lock"]
    nseeds = len(s["seeds"])
    cells = []
    for m in METHODS:
        fm = f[m]
        if fm["locked_seeds"]:
            cells.append(
                f"{mean_sd(fm['dim_locked'], '.3g')} (locked in {fm['locked_seeds']}/{nseeds})"
            )
        else:
            cells.append(f"no lock; final {mean_sd(fm['dim_final'], '.3g')}")
    opd_locks = f["opd"]["locked_seeds"] * 2 > nseeds
    ok = opd_locks and (mean["dim_locked"]["opd"] or K) < K
    rows.append(
        Row(
            "dim_locked",
            f"Effective update dimension, locked (K = {K} at width {s['width']})",
            PAPER["dim_locked"],
            tuple(cells),
            {"dim_locked": mean["dim_locked"], "dim_final": mean["dim_final"]},
            f"OPD locks (most seeds) with stable rank < K = {K}",
            ok,
            ""
            if ok
            else f"OPD locked in {f['opd']['locked_seeds']}/{nseeds} seeds by "
            f"the rule Sim_{K}(t, t_end) >= 0.9 and stable rank < {K} from t on.",
        )
    )

    lf = mean["lock_fraction"]
    cells = tuple(
        "no lock" if f[m]["locked_seeds"] == 0 else mean_sd(f[m]["lock_fraction"], ".0%")
        for m in METHODS
    )
    ok = lf["opd"] is not None and lf["opd"] <= 0.15
    rows.append(
        Row(
            "lock",
            "Lock step (fraction of training)",
            PAPER["lock"],
            cells,
            lf,
            "OPD locks within the first ~10% (<= 15% at our checkpoint spacing)",
            ok,
            ""
            if ok
            else (
                "OPD did not lock"
                if lf["opd"] is None
                else f"OPD locks at {lf['opd']:.0%} of training"
            )
            + ".",
        )
    )

    rob = {m: sims[m]["sparsification_robustness"] for m in METHODS}
    label = {
        m: None if rob[m] is None else ("high" if rob[m] >= ROBUST_LEVEL else "low")
        for m in METHODS
    }
    ok = all(label[m] == p for m, p in zip(METHODS, PAPER["sparsification"], strict=True))
    rows.append(
        Row(
            "sparsification",
            "Token-sparsification robustness (rho = 0.5; Sim vs seed-to-seed)",
            PAPER["sparsification"],
            tuple("n/a" if rob[m] is None else f"{label[m]} ({rob[m]:.2f})" for m in METHODS),
            rob,
            f"OPD and RLVR high, SFT low (high: ratio >= {ROBUST_LEVEL})",
            ok,
            ""
            if ok
            else "measured labels "
            + ", ".join(f"{m.upper()} {label[m] or 'n/a'}" for m in METHODS)
            + ".",
        )
    )

    sens = {m: sims[m].get("composition_sensitivity") for m in METHODS}
    lab = {
        m: None if sens[m] is None else ("high" if sens[m] >= SENSITIVE_LEVEL else "low")
        for m in METHODS
    }
    ok = lab["opd"] == "high" and lab["rlvr"] == "low"
    rows.append(
        Row(
            "composition",
            "Objective-composition sensitivity (A = 0.5 OPD + 0.5 RLVR)",
            PAPER["composition"],
            tuple("n/a" if sens[m] is None else f"{lab[m]} ({sens[m]:.2f})" for m in METHODS),
            sens,
            f"OPD high, RLVR low (high: 1 - relative Sim >= {SENSITIVE_LEVEL})",
            ok,
            "" if ok else f"measured OPD {lab['opd'] or 'n/a'}, RLVR {lab['rlvr'] or 'n/a'}.",
        )
    )

    off = sims["opd"].get("offpolicy_robustness")
    ok = off is not None and off >= ROBUST_LEVEL
    rows.append(
        Row(
            "offpolicy",
            "Off-policy rollout robustness (OPD)",
            PAPER["offpolicy"],
            ("n/a" if off is None else f"{'high' if ok else 'low'} ({off:.2f})", "n/a", "n/a"),
            {"opd": off},
            f"OPD's channel survives off-policy rollouts (ratio >= {ROBUST_LEVEL})",
            ok,
            ""
            if ok
            else "the off-policy run's update subspace differs from the "
            "on-policy run's more than another seed's does.",
        )
    )

    rows.append(_sufficiency_row("sufficiency", suff))
    if s.get("sufficiency_width"):
        rows.append(_sufficiency_row("sufficiency_width", s["sufficiency_width"]))

    dr = mean["spectral_drift"]
    order = _order(dr)
    ok = order == ["sft", "opd", "rlvr"]
    rows.append(
        Row(
            "drift",
            "Spectral drift ||s(W1)-s(W0)||/||s(W0)||",
            PAPER["drift"],
            tuple(mean_sd(f[m]["spectral_drift"], ".2g") for m in METHODS),
            dr,
            "SFT > OPD > RLVR",
            ok,
            "" if ok else f"we measure {_order_text(order, dr, '.2g')}; {size_words}.",
        )
    )
    return rows
