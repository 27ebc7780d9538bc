"""Every figure of the reproduce report, computed from the runs' own output files.

Inputs are what the jobs wrote: each run's ``run.json`` and ``metrics.jsonl`` (the drivers),
``analysis/<size>/<run>/diff/summary.json`` (``paramgeom diff`` of the final checkpoint
against ``checkpoint-0``) and ``.../trajectory/{summary.json,trajectory.parquet}``
(``paramgeom trajectory`` over every saved checkpoint). The only figures computed here from
weights directly are the similarities *between* runs (no single command compares two runs):
Sim_K of the final updates' top-K right singular subspaces, per attention/MLP matrix, with
:func:`paramgeom.linalg.randomized_svd` on the implicit difference (exact for these widths)
and :func:`paramgeom.metrics.sim_k`, averaged over matrices.

Definitions (each is a cell of the Key Results table; ``m`` is a method, means are over the
seeds of the main runs ``m-s<seed>``):

- unchanged %: 100 x the diff's model-level unchanged fraction (bf16 rule, eta = 1e-3,
  parameter-weighted over every tensor);
- rotation: mean over matrices of the max principal angle between the top-k subspaces of
  W0 and W1, the mean of left and right (k = width / 8, the paper's 512 / 4096);
- spectral drift: the diff's mean over matrices of ||s(W1) - s(W0)|| / ||s(W0)||;
- effective update dimension: mean stable rank of dW_t over matrices at the first saved
  checkpoint (initial), and at the lock step when the run locks (locked), from the
  trajectory; lock fraction = lock step / final step (DESIGN.md's rule with K = width / 32);
- robustness of a variant v of method m: Sim_K(m-s0, v) / Sim_K(m-s0, m-s1), the variant's
  update subspace compared with the plain run's, relative to how similar two seeds of the
  plain run are (1: as similar as another seed); "high" when >= 0.8;
- composition sensitivity: 1 - Sim_K(m-s0, opd-mix50) / Sim_K(m-s0, m-s1) for OPD and RLVR
  (the mixed objective A = 0.5 A_OPD + 0.5 A_RLVR is the other's composition); "high" when
  >= 0.2;
- functional sufficiency: final held-out accuracy of ``m-proj16`` (gradients projected on the
  top-16 right subspace of ``m-s0``'s dW at 20% of training) against ``m-s0``; "preserved"
  when within two binomial standard errors of the unconstrained run's accuracy; the same
  at the width-relative K (``m-proj<K>``), where top-16 is a large part of the space.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paramgeom.reproduce.plan import (
    GUARD_ACTIONS,
    METHODS,
    final_checkpoint,
    guard_rule,
    project_ks,
)
from paramgeom.reproduce.profiles import Profile, lock_k, rotation_k

__all__ = [
    "ROBUST_LEVEL",
    "SENSITIVE_LEVEL",
    "analyse",
    "load_run",
    "run_curve",
    "subspace_similarity",
]

ROBUST_LEVEL = 0.8
SENSITIVE_LEVEL = 0.2


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return statistics.fmean(vals) if vals else None


def _sd(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return statistics.stdev(vals) if len(vals) > 1 else None


def _stat(xs: Sequence[float | None]) -> dict[str, Any]:
    return {
        "mean": _mean(xs),
        "sd": _sd(xs),
        "values": [None if x is None else float(x) for x in xs],
    }


def load_run(out: Path, size: str, name: str) -> dict[str, Any]:
    """Everything one run wrote: run.json, the eval curve, monitor records, its diff and
    trajectory summaries and per-matrix trajectory rows."""
    from paramgeom.report.tables import read_table

    run_dir = out / "runs" / size / name
    ana = out / "analysis" / size / name
    info = _read_json(run_dir / "run.json")
    monitor = []
    with (run_dir / "metrics.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            if "geometry/stable_rank" in rec:
                monitor.append(rec)
    traj = _read_json(ana / "trajectory" / "summary.json")
    return {
        "name": name,
        "size": size,
        "dir": run_dir,
        "info": info,
        "evals": [(int(s), float(a)) for s, a in info.get("evals", [])],
        "monitor": monitor,
        "diff": _read_json(ana / "diff" / "summary.json"),
        "trajectory": traj,
        "trajectory_rows": read_table(ana / "trajectory" / "trajectory.parquet"),
    }


def run_curve(run: dict[str, Any]) -> list[dict[str, float]]:
    """Per saved step (step 0 included): model-level relative update size
    sqrt(sum ||dW_t||^2 / sum ||W0||^2) and the parameter-weighted unchanged fraction over
    the attention/MLP matrices of the trajectory."""
    by_step: dict[int, list[dict]] = {}
    for row in run["trajectory_rows"]:
        by_step.setdefault(int(row["step"]), []).append(row)
    curve = [{"step": 0, "rel_update": 0.0, "unchanged": 1.0}]
    for step in sorted(by_step):
        rows = by_step[step]
        sq = sum(r["frobenius_delta"] ** 2 for r in rows)
        sq0 = sum(
            (r["frobenius_delta"] / r["relative_change"]) ** 2 for r in rows if r["relative_change"]
        )
        n = sum(r["numel"] for r in rows)
        uf = sum(r["unchanged_fraction"] * r["numel"] for r in rows) / n
        curve.append(
            {"step": step, "rel_update": math.sqrt(sq / sq0) if sq0 else 0.0, "unchanged": uf}
        )
    return curve


def _interp_at(curve: list[dict[str, float]], key: str, value: float, out_key: str) -> float:
    xs = np.maximum.accumulate(np.array([c[key] for c in curve], dtype=np.float64))
    ys = np.array([c[out_key] for c in curve], dtype=np.float64)
    return float(np.interp(value, xs, ys))


def _gain_step(evals: list[tuple[int, float]], gain: float) -> float | None:
    """First (linearly interpolated) step at which accuracy - accuracy(0) reaches ``gain``."""
    base = evals[0][1]
    for (s0, a0), (s1, a1) in itertools.pairwise(evals):
        if a1 - base >= gain:
            if a1 == a0 or a0 - base >= gain:
                return float(s1 if a0 - base < gain else s0)
            return s0 + (s1 - s0) * (gain - (a0 - base)) / (a1 - a0)
    return None


def _matrix_names(run: dict[str, Any]) -> list[str]:
    return sorted({r["name"] for r in run["trajectory_rows"]})


def _final_subspaces(run: dict[str, Any], k: int) -> dict[str, torch.Tensor | None]:
    from paramgeom.checkpoints import open_checkpoint
    from paramgeom.linalg import randomized_svd

    out: dict[str, torch.Tensor | None] = {}
    base = open_checkpoint(run["dir"] / "checkpoint-0")
    last = open_checkpoint(final_checkpoint(run["dir"]))
    try:
        for name in _matrix_names(run):
            w0 = base.read(name).to(torch.bfloat16)
            w1 = last.read(name).to(torch.bfloat16)
            if torch.equal(w0, w1):
                out[name] = None
                continue
            kk = min(k, *w0.shape)
            _, _, vh = randomized_svd(w0, w1, kk, seed=0)
            out[name] = vh.T.contiguous()
    finally:
        base.close()
        last.close()
    return out


def subspace_similarity(a: dict, b: dict, k: int) -> float | None:
    """Mean over matrices (both updates nonzero) of Sim_K between the final updates'
    top-K right singular subspaces of two runs (module docstring)."""
    from paramgeom.metrics import sim_k

    vals = []
    for name, va in a.items():
        vb = b.get(name)
        if va is None or vb is None:
            continue
        kk = min(k, va.shape[1], vb.shape[1])
        vals.append(sim_k(va, vb, kk))
    return _mean(vals)


def _rotation(model: dict) -> float | None:
    left, right = model.get("angle_left_max_mean"), model.get("angle_right_max_mean")
    return _mean([left, right])


def _lock(run: dict) -> dict[str, Any]:
    lock = run["trajectory"].get("lock") or {}
    steps = run["trajectory"].get("steps") or []
    step = lock.get("lock_step")
    at = next((s for s in steps if s["step"] == step), None) if step is not None else None
    return {
        "step": step,
        "fraction": lock.get("lock_fraction"),
        "stable_rank": at["stable_rank_mean"] if at else None,
    }


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def _drawdown(evals: list[tuple[int, float]]) -> float:
    """Largest drop of held-out accuracy from its running best (0 for a monotone curve)."""
    best, worst = -math.inf, 0.0
    for _, a in evals:
        best = max(best, a)
        worst = max(worst, best - a)
    return worst


def _sufficiency(runs: dict, s0: int, k: int, at: float, eval_size: int) -> dict[str, Any]:
    out = {}
    for m in METHODS:
        free, proj = runs[f"{m}-s{s0}"], runs[f"{m}-proj{k}"]
        a_free = free["info"]["final_eval_accuracy"]
        a_proj = proj["info"]["final_eval_accuracy"]
        a0 = free["evals"][0][1]
        se = _binomial_se(a_free, eval_size)
        gain = a_free - a0
        out[m] = {
            "accuracy_base": a0,
            "accuracy_free": a_free,
            "accuracy_projected": a_proj,
            "gain_retained": (a_proj - a0) / gain if gain > 0 else None,
            "two_se": 2 * se,
            "preserved": a_proj >= a_free - 2 * se,
            "k": k,
            "at": at,
            "projection": proj["info"].get("projection", {}).get("matrices"),
        }
    return out


def _would_fire(run: dict[str, Any], rank: float, fraction: float) -> int | None:
    """First monitor record of ``run`` at which the guardrail rule (mean stable rank below
    ``rank`` before ``fraction`` of training) holds."""
    total = run["info"]["config"]["steps"]
    for rec in run["monitor"]:
        sr = rec.get("geometry/stable_rank")
        if sr and rec["step"] / total < fraction and sr < rank:
            return int(rec["step"])
    return None


def _method_figures(runs: dict[str, dict], seeds: Sequence[int], eval_size: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for m in METHODS:
        rs = [runs[f"{m}-s{s}"] for s in seeds]
        locks = [_lock(r) for r in rs]
        res[m] = {
            "unchanged_pct": _stat([100 * r["diff"]["model"]["unchanged_fraction"] for r in rs]),
            "rotation_deg": _stat([_rotation(r["diff"]["model"]) for r in rs]),
            "spectral_drift": _stat([r["diff"]["model"].get("spectral_drift_mean") for r in rs]),
            "rel_update": _stat([r["diff"]["model"].get("relative_change") for r in rs]),
            "stable_rank_final_diff": _stat(
                [r["diff"]["model"].get("stable_rank_mean") for r in rs]
            ),
            "dim_initial": _stat([r["trajectory"]["steps"][0]["stable_rank_mean"] for r in rs]),
            "dim_final": _stat([r["trajectory"]["steps"][-1]["stable_rank_mean"] for r in rs]),
            "dim_locked": _stat([lk["stable_rank"] for lk in locks]),
            "lock_fraction": _stat([lk["fraction"] for lk in locks]),
            "locked_seeds": sum(lk["step"] is not None for lk in locks),
            "accuracy_base": _stat([r["evals"][0][1] for r in rs]),
            "accuracy_final": _stat([r["info"]["final_eval_accuracy"] for r in rs]),
            "eval_size": eval_size,
            "seeds": list(seeds),
        }
    return res


def _regimes(fig: dict[str, Any]) -> dict[str, str]:
    """Relative regime labels: the paper's three regimes are positions on two orderings
    (most unchanged and least rotated = sparse principal; least unchanged and most rotated =
    full-space; between = relaxed off-principal). Methods whose two orderings disagree are
    "mixed"."""
    names = ["sparse principal", "relaxed off-principal", "full-space"]
    u = sorted(METHODS, key=lambda m: -(fig[m]["unchanged_pct"]["mean"] or 0.0))
    r = sorted(METHODS, key=lambda m: fig[m]["rotation_deg"]["mean"] or 0.0)
    out = {}
    for m in METHODS:
        iu, ir = u.index(m), r.index(m)
        out[m] = names[iu] if iu == ir else f"mixed (unchanged #{iu + 1}, rotation #{ir + 1})"
    return out


def analyse(out: Path, profile: Profile, widths: dict[str, int], progress=None) -> dict:
    """Every figure of the report (``summary.json``) from the files under ``out``."""
    out = Path(out)
    size = profile.main_size
    width = widths[size]
    K = lock_k(width)
    seeds = profile.seeds
    s0 = seeds[0]
    tick = progress or (lambda _msg: None)

    def runs_in(sz: str, names: Sequence[str]) -> dict[str, dict]:
        return {n: load_run(out, sz, n) for n in names}

    main_names = [f"{m}-s{s}" for s in seeds for m in METHODS]
    variant_names = [f"{m}-keep50" for m in METHODS] + ["opd-offpolicy", "opd-mix50"]
    ks = project_ks(profile, width)
    proj_names = [f"{m}-proj{k}" for k in ks for m in METHODS]
    guard_names = [f"opd-guard-{a}-s{s}" for a in GUARD_ACTIONS for s in seeds]
    runs = runs_in(size, main_names + variant_names + proj_names + guard_names)
    eval_size = profile.eval_size

    fig = _method_figures(runs, seeds, eval_size)
    regimes = _regimes(fig)

    # Matched budgets: unchanged fraction at a common relative update size and at a common
    # accuracy gain, interpolated along each main run's saved checkpoints.
    curves = {n: run_curve(r) for n, r in runs.items()}
    r_star = min(curves[n][-1]["rel_update"] for n in main_names)
    gains = [runs[n]["evals"][-1][1] - runs[n]["evals"][0][1] for n in main_names]
    g_star = min(gains) if min(gains) > 0 else None
    matched: dict[str, Any] = {"rel_update": r_star, "accuracy_gain": g_star, "methods": {}}
    for m in METHODS:
        at_r, at_g = [], []
        for s in seeds:
            n = f"{m}-s{s}"
            at_r.append(100 * _interp_at(curves[n], "rel_update", r_star, "unchanged"))
            step = _gain_step(runs[n]["evals"], g_star) if g_star is not None else None
            at_g.append(
                None if step is None else 100 * _interp_at(curves[n], "step", step, "unchanged")
            )
        ends = [curves[f"{m}-s{s}"][-1] for s in seeds]
        matched["methods"][m] = {
            "rel_update_final": _stat([c["rel_update"] for c in ends]),
            "unchanged_pct_final": _stat([100 * c["unchanged"] for c in ends]),
            "unchanged_pct_at_rel_update": _stat(at_r),
            "unchanged_pct_at_gain": _stat(at_g),
        }

    # Subspaces of the final updates, for comparisons between runs.
    tick("subspaces of the final updates")
    need = {f"{m}-s{s}" for m in METHODS for s in seeds} | set(variant_names)
    subspaces = {n: _final_subspaces(runs[n], K) for n in sorted(need)}
    sims: dict[str, Any] = {}
    for m in METHODS:
        pairs = [
            subspace_similarity(subspaces[f"{m}-s{a}"], subspaces[f"{m}-s{b}"], K)
            for a, b in itertools.combinations(seeds, 2)
        ]
        seed_sim = _mean(pairs)
        keep = subspace_similarity(subspaces[f"{m}-s{s0}"], subspaces[f"{m}-keep50"], K)
        rec = {
            "seed_pairs": seed_sim,
            "keep50": keep,
            "sparsification_robustness": keep / seed_sim if keep is not None and seed_sim else None,
        }
        if m in ("opd", "rlvr"):
            mix = subspace_similarity(subspaces[f"{m}-s{s0}"], subspaces["opd-mix50"], K)
            rec["mix50"] = mix
            rec["composition_sensitivity"] = (
                (1 - mix / seed_sim) if mix is not None and seed_sim else None
            )
        if m == "opd":
            off = subspace_similarity(subspaces[f"opd-s{s0}"], subspaces["opd-offpolicy"], K)
            rec["offpolicy"] = off
            rec["offpolicy_robustness"] = off / seed_sim if off is not None and seed_sim else None
        sims[m] = rec
    variants = {}
    for n in variant_names:
        r = runs[n]
        variants[n] = {
            "unchanged_pct": 100 * r["diff"]["model"]["unchanged_fraction"],
            "rotation_deg": _rotation(r["diff"]["model"]),
            "rel_update": r["diff"]["model"].get("relative_change"),
            "lock": _lock(r),
            "accuracy_final": r["info"]["final_eval_accuracy"],
            "dim_initial": r["trajectory"]["steps"][0]["stable_rank_mean"],
            "dim_final": r["trajectory"]["steps"][-1]["stable_rank_mean"],
        }

    # Functional sufficiency, at the paper's k and at the width-relative K.
    sufficiency = {k: _sufficiency(runs, s0, k, profile.project_at, eval_size) for k in ks}

    # Guardrail experiment.
    rank, frac = guard_rule(profile, width)
    arms: dict[str, Any] = {}
    for action in ("log",) + GUARD_ACTIONS:
        names = [f"opd-s{s}" if action == "log" else f"opd-guard-{action}-s{s}" for s in seeds]
        rs = [runs[n] for n in names]
        mons = [r["info"].get("monitor", {}) for r in rs]
        arms[action] = {
            "runs": names,
            "accuracy_final": _stat([r["info"]["final_eval_accuracy"] for r in rs]),
            "accuracy_best": _stat([max(a for _, a in r["evals"]) for r in rs]),
            "drawdown": _stat([_drawdown(r["evals"]) for r in rs]),
            "steps_done": [r["info"].get("steps_done") for r in rs],
            # Plain OPD's arm acts on nothing: report where the rule would have fired.
            "fired": [
                m.get("action_step") if action != "log" else _would_fire(r, rank, frac)
                for m, r in zip(mons, rs, strict=True)
            ],
        }
    plain = arms["log"]["accuracy_final"]
    for action in GUARD_ACTIONS:
        a = arms[action]["accuracy_final"]
        diff = (
            (a["mean"] - plain["mean"])
            if a["mean"] is not None and plain["mean"] is not None
            else None
        )
        se = math.sqrt(
            sum(
                _binomial_se(v, eval_size) ** 2
                for v in a["values"] + plain["values"]
                if v is not None
            )
        ) / max(1, len(seeds))
        arms[action]["delta_vs_plain"] = diff
        arms[action]["two_se"] = 2 * se
        arms[action]["improves"] = diff is not None and diff > 2 * se
    calib = []
    for s in seeds:
        for rec in runs[f"opd-s{s}"]["monitor"]:
            calib.append(
                {
                    "seed": s,
                    "step": rec["step"],
                    "fraction": rec["step"] / profile.steps,
                    "stable_rank": rec.get("geometry/stable_rank"),
                    "sim_k": rec.get("geometry/sim_k"),
                }
            )
    guardrail = {
        "rule": {
            "overlock_rank": rank,
            "overlock_fraction": frac,
            "k": K,
            "every": profile.monitor_interval,
        },
        "arms": arms,
        "plain_opd_records": calib,
    }

    # Scaling: the three-way comparison at every size.
    scaling = {
        size: {
            m: {
                k: fig[m][k]["mean"]
                for k in ("unchanged_pct", "rotation_deg", "dim_final", "rel_update")
            }
            | {"lock_fraction": fig[m]["lock_fraction"]["mean"]}
            for m in METHODS
        }
    }
    for sz in profile.scaling_sizes:
        if sz == size:
            continue
        tick(f"scaling size {sz}")
        srun = runs_in(sz, [f"{m}-s{s}" for s in seeds for m in METHODS])
        sf = _method_figures(srun, seeds, eval_size)
        scaling[sz] = {
            m: {
                k: sf[m][k]["mean"]
                for k in ("unchanged_pct", "rotation_deg", "dim_final", "rel_update")
            }
            | {"lock_fraction": sf[m]["lock_fraction"]["mean"]}
            for m in METHODS
        }

    return {
        "profile": profile.name,
        "size": size,
        "width": width,
        "k_lock": K,
        "k_rotation": rotation_k(width, profile.diff_rank),
        "seeds": list(seeds),
        "steps": profile.steps,
        "lr": profile.lr,
        "methods": fig,
        "regimes": regimes,
        "matched_budget": matched,
        "similarity": sims,
        "variants": variants,
        # The paper's top-16 test, and the same test at the width-relative K (None when
        # K is 16).
        "sufficiency": sufficiency[profile.project_k],
        "sufficiency_width": next(
            (v for k, v in sufficiency.items() if k != profile.project_k), None
        ),
        "guardrail": guardrail,
        "scaling": scaling,
        "curves": curves,
        "runs": {
            n: {
                "evals": r["evals"],
                "final_accuracy": r["info"]["final_eval_accuracy"],
                "steps_done": r["info"].get("steps_done"),
                "trajectory_steps": r["trajectory"].get("steps"),
                "lock": _lock(r),
                "diff_model": r["diff"]["model"],
            }
            for n, r in runs.items()
        },
    }
