"""The monitor's action trigger (DESIGN.md "Monitor"): ``trigger="over_locking"`` fires the
action at the first record the over-locking guardrail flags, with that record's subspaces;
the drivers' ``--monitor-*`` flags; ``python -m paramgeom.drivers.pretrain``.

The constructed trajectory is the lock tests' (tests/test_monitor.py): Gaussian updates
(stable rank ~14) before step 50, a fixed rank-12 right subspace with stable rank ~1.6 from
step 50 on. With ``total_steps=200`` and ``overlock_fraction=0.3`` the guardrail flags step
50 (25% of training, srank < 2); the lock (window 3) is detected at step 80.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from test_monitor import TwoLinear, lock_trajectory, oracle, sim

from paramgeom.monitor import LOG_KEYS, GeometryMonitor, log_items

GUARD = {"every": 10, "k": 8, "total_steps": 200, "overlock_fraction": 0.3}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_over_locking_trigger_fires_once_at_the_flag():
    model = TwoLinear()
    w0 = [p.detach().clone() for p in model.weights()]
    calls, seen = [], []

    def action(mon, rec):
        calls.append(rec["step"])
        # The subspaces the action gets are this record's (not the previous record's).
        subspaces = mon.subspaces
        for name, p in zip(mon.names, model.weights(), strict=True):
            seen.append((name, subspaces[name].clone(), p.detach().clone()))

    mon = GeometryMonitor(model, on_lock=action, trigger="over_locking", **GUARD)
    with pytest.warns(RuntimeWarning, match="over-locking at step 50"):
        lock_trajectory(mon, model, lock_at=50, end=150, unlock_at=130)
    by_step = {r["step"]: r for r in mon.records}
    assert calls == [50]  # once: not again at the lock detection (80) nor later
    assert mon.action_step == 50 and mon.over_locking_step == 50
    assert mon.lock_step == 50 and mon.lock_detected_step == 80  # the lock is still recorded
    assert [by_step[s]["action_step"] for s in (40, 50, 80, 150)] == [None, 50, 50, 50]
    assert by_step[50]["over_locking"] is True and by_step[40]["over_locking"] is False
    for a, (name, v, w) in zip(w0, seen, strict=True):
        assert sim(v, oracle(a, w, 8)[4]) == pytest.approx(1.0, abs=1e-6), name
    assert "action_step" in LOG_KEYS and log_items(by_step[50])["geometry/action_step"] == 50
    assert "geometry/action_step" not in log_items(by_step[40])


def test_lock_trigger_is_unchanged():
    calls = []
    model = TwoLinear()
    mon = GeometryMonitor(model, on_lock=lambda m, r: calls.append(r["step"]), **GUARD)
    assert mon.config.trigger == "lock"
    with pytest.warns(RuntimeWarning, match="over-locking"):
        lock_trajectory(mon, model, lock_at=50, end=150, unlock_at=130)
    assert calls == [80] and mon.action_step == 80 and mon.over_locking_step == 50
    assert mon.records[3]["action_step"] is None and mon.records[-1]["action_step"] == 80


@pytest.mark.filterwarnings("ignore:paramgeom monitor")
def test_over_locking_builtin_actions():
    model = TwoLinear()
    mon = GeometryMonitor(model, on_lock="stop", trigger="over_locking", **GUARD)
    lock_trajectory(mon, model, lock_at=50, end=40)
    assert not mon.should_stop and mon.action_step is None
    model = TwoLinear()
    mon = GeometryMonitor(model, on_lock="stop", trigger="over_locking", **GUARD)
    lock_trajectory(mon, model, lock_at=50, end=50)
    assert mon.should_stop and mon.action_step == 50 and mon.lock_step is None

    model = TwoLinear()
    mon = GeometryMonitor(model, on_lock="perturb", trigger="over_locking", **GUARD)
    last = lock_trajectory(mon, model, lock_at=50, end=50)
    rows = {r["name"]: r for r in mon.matrix_records if r["step"] == 50}
    for name, p, w in zip(mon.names, model.weights(), last, strict=True):
        noise = p.detach().double() - w.double()
        v = mon.subspaces[name]
        assert float(noise.norm()) == pytest.approx(0.1 * rows[name]["dw_fro"], rel=1e-5)
        assert float((noise @ v).norm()) < 1e-5 * float(noise.norm())

    model = TwoLinear()
    mon = GeometryMonitor(model, on_lock="project", trigger="over_locking", **GUARD)
    lock_trajectory(mon, model, lock_at=50, end=50)
    assert mon.project_gradients() == 0  # hooks already on both matrices
    mon.remove_hooks()
    assert mon.project_gradients() == 2


@pytest.mark.parametrize("trigger", ["over-locking", "stop", "", None])
def test_bad_trigger(trigger):
    with pytest.raises(ValueError, match="trigger must be one of"):
        GeometryMonitor(TwoLinear(), trigger=trigger)


# --------------------------------------------------------------------------------------
# drivers

# pretrain's flags (the same tiny teacher and student base as the drivers build) and the
# driver's: small batches and a 16-problem eval set keep each run near a second.
PRETRAIN = ["--eval-size", "16", "--teacher-steps", "4", "--student-steps", "2",
            "--threads", "1", "--quiet"]  # fmt: skip
FAST = [*PRETRAIN, "--eval-every", "0", "--prompts", "4", "--samples", "4", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """A cache filled by ``paramgeom.drivers.pretrain``: its printed folders by role."""
    pytest.importorskip("transformers")
    from paramgeom.drivers import pretrain

    root = tmp_path_factory.mktemp("cache")
    folders = {"root": root}
    n = torch.get_num_threads()
    for role in ("teacher", "student"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert pretrain.main(["--role", role, "--cache", str(root), *PRETRAIN]) == 0
        folders[role] = buf.getvalue().splitlines()[-1]
        assert (Path(folders[role]) / "paramgeom_recipe.json").is_file()
    torch.set_num_threads(n)
    return folders


def test_opd_stops_at_the_over_locking_flag(tmp_path, cache):
    from paramgeom.drivers import opd

    out = tmp_path / "run"
    argv = ["--out", str(out), "--cache", str(cache["root"]), "--steps", "6", "--save-every",
            "3", *FAST, "--monitor-every", "2", "--monitor-trigger", "over-locking",
            "--overlock-rank", "1000", "--overlock-fraction", "1.0",
            "--monitor-action", "stop"]  # fmt: skip
    with pytest.warns(RuntimeWarning, match="over-locking at step 2"):
        assert opd.main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    # The driver found pretrain's cache entries (the same recipes): nothing retrained.
    assert info["teacher"]["path"] == cache["teacher"]
    assert info["student"]["path"] == cache["student"]
    assert info["status"] == "done" and info["steps_done"] == 2
    assert info["checkpoints"] == [0, 2] and (out / "checkpoint-2" / "config.json").is_file()
    assert [e[0] for e in info["evals"]] == [0, 2]  # evaluated at the stop
    assert info["final_eval_accuracy"] == info["evals"][-1][1]
    mon = info["monitor"]
    assert mon["action"] == "stop" and mon["trigger"] == "over_locking"
    assert mon["k"] == 16 and mon["overlock_rank"] == 1000 and mon["overlock_fraction"] == 1.0
    assert mon["over_locking_step"] == 2 and mon["action_step"] == 2 and mon["stopped"]
    assert mon["lock_step"] is None
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2]
    assert recs[2]["geometry/action_step"] == 2 and recs[2]["geometry/over_locking"] == 1.0
    assert "eval_accuracy" in recs[2]


@pytest.mark.parametrize(
    "flag", [["--monitor-action", "stop"], ["--monitor-trigger", "over-locking"],
             ["--monitor-k", "8"], ["--overlock-rank", "3"], ["--overlock-fraction", "0.1"],
             ["--perturb-scale", "0.2"]],
)  # fmt: skip
def test_monitor_flag_needs_monitor_every(tmp_path, flag, capsys):
    pytest.importorskip("transformers")
    from paramgeom.drivers import opd

    argv = ["--out", str(tmp_path / "bad"), *FAST, *flag]
    assert opd.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{flag[0]} needs --monitor-every N > 0" in err
    assert not (tmp_path / "bad").exists()  # nothing trained or written
