"""``paramgeom reproduce --smoke`` end to end, its table checked against a float64 oracle.

The smoke profile trains barely at all (1-digit addition, a few steps), so its figures mean
little; what is tested is that every cell of the Key Results table is computed, for all
three methods, and that each equals the figure recomputed here, independently, in numpy
float64 from the runs' own checkpoint files (never from paramgeom's outputs): unchanged
fraction, subspace rotation, spectral drift, initial stable rank, lock fraction,
seed-to-seed Sim_K, the matched-update-size unchanged fraction. Then a resume: a job whose
marker is removed is the only one run again.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
torch = pytest.importorskip("torch")

METHODS = ("opd", "sft", "rlvr")
ETA = 1e-3
# Rows whose cells the paper leaves empty for some methods: ours may be n/a exactly there.
PAPER_NA = {("composition", "sft"), ("offpolicy", "sft"), ("offpolicy", "rlvr")}


def _run(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "reproduce", "--smoke", "--out", str(out),
         "--quiet"],
        capture_output=True, text=True, env=env, timeout=1500,
    )  # fmt: skip


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "smoke"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


# -- float64 oracle ------------------------------------------------------------------------


def _load(folder: Path) -> dict[str, np.ndarray]:
    tensors = safetensors_torch.load_file(str(folder / "model.safetensors"))
    return {k: v.to(torch.float64).numpy() for k, v in tensors.items()}


def _steps(run: Path) -> list[int]:
    found = [int(m.group(1)) for p in run.glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]  # fmt: skip
    return sorted(found)


def _is_matrix(name: str, w: np.ndarray) -> bool:
    """Attention and MLP weight matrices (what the trajectory follows)."""
    return w.ndim == 2 and (".self_attn." in name or ".mlp." in name)


def _unchanged(a: dict, b: dict, names) -> tuple[int, int]:
    same = total = 0
    for n in names:
        x, y = a[n], b[n]
        same += int(np.sum(np.abs(y - x) <= ETA * np.maximum(np.abs(x), np.abs(y))))
        total += x.size
    return same, total


def _max_angle(x: np.ndarray, y: np.ndarray, k: int, side: str) -> float:
    """Largest principal angle (degrees) between the top-k left or right singular subspaces
    of x and y, by the sine formulation; None where that side has only k dimensions (the
    whole space: not defined, DiffOptions.subspace_k)."""
    if side == "right":
        x, y = x.T, y.T
    k = min(k, *x.shape)
    if k >= x.shape[0]:
        return None
    u0 = np.linalg.svd(x, full_matrices=False)[0][:, :k]
    u1 = np.linalg.svd(y, full_matrices=False)[0][:, :k]
    resid = u1 - u0 @ (u0.T @ u1)
    s = np.linalg.svd(resid, compute_uv=False)
    return float(np.degrees(np.arcsin(np.clip(s.max(initial=0.0), 0.0, 1.0))))


def _drift(x: np.ndarray, y: np.ndarray, k: int) -> float:
    k = min(k, *x.shape)
    s0 = np.linalg.svd(x, compute_uv=False)[:k]
    s1 = np.linalg.svd(y, compute_uv=False)[:k]
    return float(np.linalg.norm(s1 - s0) / np.linalg.norm(s0))


def _update(w0: dict, wt: dict, names) -> dict[str, tuple[float, np.ndarray] | None]:
    """Per matrix: (stable rank of dW, right singular vectors of dW), None for dW == 0."""
    out = {}
    for n in names:
        d = wt[n] - w0[n]
        if not np.any(d):
            out[n] = None
            continue
        _, s, vt = np.linalg.svd(d, full_matrices=False)
        out[n] = (float(np.sum(d * d) / s[0] ** 2), vt.T)
    return out


def _sim(va: np.ndarray, vb: np.ndarray, k: int) -> float:
    k = min(k, va.shape[1], vb.shape[1])
    return float(np.sum((va[:, :k].T @ vb[:, :k]) ** 2) / k)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


class Oracle:
    def __init__(self, out: Path, summary: dict):
        self.out, self.s = out, summary
        self.size = summary["size"]
        self._cache: dict[tuple[str, int], dict] = {}

    def run(self, name: str) -> Path:
        return self.out / "runs" / self.size / name

    def weights(self, name: str, step: int) -> dict:
        key = (name, step)
        if key not in self._cache:
            self._cache[key] = _load(self.run(name) / f"checkpoint-{step}")
        return self._cache[key]

    def final(self, name: str) -> int:
        return _steps(self.run(name))[-1]

    def matrices(self, name: str) -> list[str]:
        w = self.weights(name, 0)
        return sorted(n for n in w if _is_matrix(n, w[n]))

    def unchanged_pct(self, name: str) -> float:
        a, b = self.weights(name, 0), self.weights(name, self.final(name))
        same, total = _unchanged(a, b, sorted(a))
        return 100.0 * same / total

    def rotation(self, name: str) -> float:
        a, b = self.weights(name, 0), self.weights(name, self.final(name))
        k = self.s["k_rotation"]
        two_d = [n for n in sorted(a) if a[n].ndim == 2]
        left = _mean([_max_angle(a[n], b[n], k, "left") for n in two_d])
        right = _mean([_max_angle(a[n], b[n], k, "right") for n in two_d])
        return (left + right) / 2

    def drift(self, name: str) -> float:
        a, b = self.weights(name, 0), self.weights(name, self.final(name))
        return _mean([_drift(a[n], b[n], self.s["k_rotation"]) for n in sorted(a)
                      if a[n].ndim == 2])  # fmt: skip

    def updates(self, name: str, step: int) -> dict:
        return _update(self.weights(name, 0), self.weights(name, step), self.matrices(name))

    def srank(self, name: str, step: int) -> float:
        return _mean([u[0] for u in self.updates(name, step).values() if u is not None])

    def lock_fraction(self, name: str) -> float | None:
        """DESIGN.md's rule: first saved step from which mean Sim_K(t, t_end) >= 0.9 and mean
        stable rank < K hold at every later step; the final step alone does not count."""
        k = self.s["k_lock"]
        steps = [t for t in _steps(self.run(name)) if t > 0]
        end = self.updates(name, steps[-1])
        ok = []
        for t in steps:
            ut = self.updates(name, t)
            sims = [_sim(ut[n][1], end[n][1], k) for n in ut if ut[n] and end[n]]
            sr = _mean([u[0] for u in ut.values() if u is not None])
            ok.append(bool(sims) and _mean(sims) >= 0.9 and sr is not None and sr < k)
        for i, t in enumerate(steps[:-1]):
            if all(ok[i:]):
                return t / steps[-1]
        return None

    def seed_similarity(self, method: str) -> float:
        k = self.s["k_lock"]
        ups = {s: self.updates(f"{method}-s{s}", self.final(f"{method}-s{s}"))
               for s in self.s["seeds"]}  # fmt: skip
        vals = []
        for a, b in itertools.combinations(self.s["seeds"], 2):
            sims = [_sim(ups[a][n][1], ups[b][n][1], k) for n in ups[a]
                    if ups[a][n] is not None and ups[b][n] is not None]  # fmt: skip
            vals.append(_mean(sims))
        return _mean(vals)

    def curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(relative update size, unchanged fraction) over the attention/MLP matrices at
        step 0 and every saved step."""
        names = self.matrices(name)
        w0 = self.weights(name, 0)
        base = sum(float(np.sum(w0[n] ** 2)) for n in names)
        xs, ys = [0.0], [1.0]
        for t in _steps(self.run(name))[1:]:
            wt = self.weights(name, t)
            xs.append(np.sqrt(sum(float(np.sum((wt[n] - w0[n]) ** 2)) for n in names) / base))
            same, total = _unchanged(w0, wt, names)
            ys.append(same / total)
        return np.maximum.accumulate(np.array(xs)), np.array(ys)


# -- tests -----------------------------------------------------------------------------------


def test_every_cell_is_computed(smoke):
    out, s = smoke
    rows = {r["key"]: r for r in s["key_results"]}
    assert len(rows) == 13  # 12 of the paper's rows (+ matched size) and top-K sufficiency
    for key, row in rows.items():
        assert len(row["ours"]) == 3 and len(row["paper"]) == 3
        for m, cell in zip(METHODS, row["ours"], strict=True):
            if (key, m) in PAPER_NA:
                continue
            assert cell and cell != "n/a" and "None" not in cell, (key, m, cell)
        assert row["agrees"] in (True, False)
        assert row["agrees"] or row["why"], key
    report = (out / "report.md").read_text()
    for row in rows.values():
        assert row["diagnostic"].split(" (")[0].split(",")[0] in report.replace("\\", "")
    outputs = ("sim_k.png", "stable_rank.png", "accuracy.png", "unchanged_vs_update.png",
               "heatmap_unchanged.png", "guardrail.png", "report.html", "commands.sh")  # fmt: skip
    for name in outputs:
        assert (out / name).stat().st_size > 0, name
    commands = (out / "commands.sh").read_text()
    assert "python -m paramgeom.drivers.opd" in commands and "paramgeom trajectory" in commands


def test_cells_match_float64_oracle(smoke):
    out, s = smoke
    o = Oracle(out, s)
    seeds = s["seeds"]
    for m in METHODS:
        fig = s["methods"][m]
        runs = [f"{m}-s{sd}" for sd in seeds]
        assert fig["unchanged_pct"]["values"] == pytest.approx(
            [o.unchanged_pct(r) for r in runs], abs=1e-9
        )
        assert fig["rotation_deg"]["values"] == pytest.approx(
            [o.rotation(r) for r in runs], rel=1e-4, abs=1e-6
        )
        assert fig["spectral_drift"]["values"] == pytest.approx(
            [o.drift(r) for r in runs], rel=1e-4, abs=1e-9
        )
        first = [_steps(o.run(r))[1] for r in runs]
        assert fig["dim_initial"]["values"] == pytest.approx(
            [o.srank(r, t) for r, t in zip(runs, first, strict=True)], rel=1e-4
        )
        assert fig["lock_fraction"]["values"] == pytest.approx([o.lock_fraction(r) for r in runs])
        assert s["similarity"][m]["seed_pairs"] == pytest.approx(o.seed_similarity(m), abs=1e-4)
        infos = [json.loads((o.run(r) / "run.json").read_text()) for r in runs]
        assert fig["accuracy_final"]["values"] == [i["final_eval_accuracy"] for i in infos]
        for key, k in (("sufficiency", 16), ("sufficiency_width", s["k_lock"])):
            proj = json.loads((o.run(f"{m}-proj{k}") / "run.json").read_text())
            assert proj["projection"]["k"] == k
            assert s[key][m]["accuracy_projected"] == proj["final_eval_accuracy"]

    # The table's cells are these figures, formatted.
    rows = {r["key"]: r for r in s["key_results"]}
    for i, m in enumerate(METHODS):
        mean = _mean([o.unchanged_pct(f"{m}-s{sd}") for sd in seeds])
        assert rows["unchanged"]["ours"][i].startswith(f"{mean:.1f}%")

    # Matched update size: every main run's unchanged fraction at the smallest final size.
    curves = {f"{m}-s{sd}": o.curve(f"{m}-s{sd}") for m in METHODS for sd in seeds}
    r_star = min(c[0][-1] for c in curves.values())
    assert s["matched_budget"]["rel_update"] == pytest.approx(r_star, rel=1e-6)
    for m in METHODS:
        want = [100 * float(np.interp(r_star, *curves[f"{m}-s{sd}"])) for sd in seeds]
        got = s["matched_budget"]["methods"][m]["unchanged_pct_at_rel_update"]["values"]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_resume_reruns_only_unfinished_jobs(smoke):
    out, s = smoke
    marker = out / "analysis" / s["size"] / "opd-s0" / "diff" / ".reproduce-job.json"
    assert marker.is_file()
    marker.unlink()
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["jobs"]["run"] == 1
    assert again["jobs"]["reused"] == len(again["jobs"]["seconds"]) - 1
    assert [r["ours"] for r in again["key_results"]] == [r["ours"] for r in s["key_results"]]


def test_other_profile_in_same_folder_is_refused(smoke):
    out, _ = smoke
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "reproduce", "--quick", "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "smoke" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_full_plan_covers_every_experiment_and_the_scaling_sizes(tmp_path):
    from paramgeom.drivers.models import SIZES
    from paramgeom.reproduce.plan import build_plan
    from paramgeom.reproduce.profiles import PROFILES, lock_k

    prof = PROFILES["full"]
    widths = {s: SIZES[s].hidden for s in (prof.main_size, *prof.scaling_sizes)}
    assert widths[prof.main_size] >= 512  # the full run at the paper-like width
    jobs = build_plan(prof, tmp_path, widths)
    ids = {j.id for j in jobs}
    assert len(ids) == len(jobs)
    main = prof.main_size
    for m in METHODS:
        for s in prof.seeds:
            for size in (main, *prof.scaling_sizes):
                assert f"train-{size}-{m}-s{s}" in ids
        assert f"train-{main}-{m}-keep50" in ids and f"train-{main}-{m}-proj16" in ids
        assert f"train-tiny-{m}-keep50" not in ids  # variants only at the main size
    for action in ("stop", "project", "perturb"):
        assert all(f"train-{main}-opd-guard-{action}-s{s}" in ids for s in prof.seeds)
    by_id = {j.id: j for j in jobs}
    # Every job only needs jobs planned before it; RLVR does not wait for the teacher.
    seen: set[str] = set()
    for job in jobs:
        assert set(job.needs) <= seen, job.id
        seen.add(job.id)
    assert f"pretrain-teacher-{main}" not in by_id[f"train-{main}-rlvr-s0"].needs
    assert f"train-{main}-opd-s0" in by_id[f"train-{main}-opd-proj16"].needs
    argv = by_id[f"train-{main}-opd-guard-stop-s0"].build()
    k = lock_k(widths[main])
    assert argv[argv.index("--monitor-k") + 1] == str(k)
    assert float(argv[argv.index("--overlock-rank") + 1]) == 1.5 * k


def test_runner_skips_dependents_of_a_failed_job_and_keeps_finished_ones(tmp_path):
    from paramgeom.reproduce.plan import Job
    from paramgeom.reproduce.runner import MARKER, JobsFailedError, run_jobs

    ok = Job("ok", "x", lambda: ["backends", "--json"], tmp_path / "ok")
    bad = Job("bad", "x", lambda: ["diff", str(tmp_path / "nope"), str(tmp_path / "nope"),
                                   "--out", str(tmp_path / "bad")], tmp_path / "bad")  # fmt: skip
    after = Job("after", "x", lambda: ["backends"], tmp_path / "after", needs=("bad",))
    events: list[tuple[str, str]] = []
    with pytest.raises(JobsFailedError) as err:
        run_jobs([ok, bad, after], tmp_path / "logs", workers=2,
                 on_event=lambda kind, job, _i: events.append((kind, job.id)))  # fmt: skip
    assert set(err.value.failed) == {"bad"}
    assert ("done", "ok") in events and ("failed", "bad") in events
    assert not any(j == "after" for _, j in events)  # never started
    assert (tmp_path / "ok" / MARKER).is_file() and not (tmp_path / "bad" / MARKER).exists()
    assert "no such file" in (tmp_path / "logs" / "bad.log").read_text()
    # A second pass reuses the finished job and runs only what is left.
    events.clear()
    with pytest.raises(JobsFailedError):
        run_jobs([ok, bad, after], tmp_path / "logs", workers=1,
                 on_event=lambda kind, job, _i: events.append((kind, job.id)))  # fmt: skip
    assert ("reused", "ok") in events and ("start", "ok") not in events


def test_scaling_sizes_reach_the_summary_and_the_report(smoke, tmp_path):
    """The full profile's second and third sizes (three-way comparison only) go through
    the same analysis: exercised here on a copy of the smoke runs relabelled as another
    size, without training anything."""
    import dataclasses
    import shutil

    from paramgeom.reproduce.analysis import analyse
    from paramgeom.reproduce.profiles import PROFILES
    from paramgeom.reproduce.report import plot_all, write_report
    from paramgeom.reproduce.table import key_results

    out, s = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("models", "*.png"))
    for part in ("runs", "analysis"):
        shutil.copytree(copy / part / "tiny", copy / part / "small")
    prof = dataclasses.replace(PROFILES["smoke"], scaling_sizes=("small",))
    got = analyse(copy, prof, {"tiny": 128, "small": 256})
    assert set(got["scaling"]) == {"tiny", "small"}
    for m in METHODS:
        # Same files under another name: the same figures.
        assert got["scaling"]["small"][m] == got["scaling"]["tiny"][m]
        assert got["scaling"]["tiny"][m]["unchanged_pct"] == pytest.approx(
            s["methods"][m]["unchanged_pct"]["mean"]
        )
    got.update(output=str(copy), wall_s=0.0, jobs={"run": 0, "reused": 0, "workers": 1})
    plots = plot_all(got, copy)
    write_report(got, key_results(got), copy, plots, [])
    text = (copy / "report.md").read_text()
    assert "| small | OPD |" in text and "no trend can be stated" not in text
