"""The drivers' ``--monitor-every N``: GeometryMonitor figures in metrics.jsonl and run.json,
and a monitor that asks to stop ends the loop (DESIGN.md "Drivers", "Monitor")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import paramgeom.monitor  # noqa: E402
from paramgeom.drivers import sft  # noqa: E402

FAST = ["--steps", "3", "--save-every", "1", "--eval-size", "16", "--eval-every", "0",
        "--teacher-steps", "4", "--student-steps", "2", "--threads", "1", "--quiet",
        "--batch", "16", "--sft-target", "gold"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_monitor_every_writes_geometry(tmp_path, cache):
    out = tmp_path / "run"
    assert sft.main(["--out", str(out), "--cache", str(cache), *FAST, "--lr", "1e-3",
                     "--monitor-every", "1"]) == 0  # fmt: skip
    recs = _metrics(out)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]  # still one record per step
    geo = [r for r in recs if "geometry/stable_rank" in r]
    assert [r["step"] for r in geo] == [1, 2, 3]
    for r in geo:
        assert 0.0 <= r["geometry/unchanged_fraction"] < 1.0
        assert r["geometry/dw_fro"] > 0 and r["geometry/stable_rank"] >= 1.0
        assert r["geometry/locked"] == 0.0 and r["geometry/monitor_s"] >= 0
    assert "geometry/sim_k" not in geo[0] and 0 < geo[1]["geometry/sim_k"] <= 1
    info = json.loads((out / "run.json").read_text())
    assert info["monitor"]["every"] == 1 and info["monitor"]["k"] == 16
    assert info["monitor"]["matrices"] == 4 * 7  # tiny: 4 layers x q, k, v, o, gate, up, down
    assert info["monitor"]["lock_step"] is None


def test_monitor_off_by_default_and_bad_value(tmp_path, cache, capsys):
    out = tmp_path / "off"
    assert sft.main(["--out", str(out), "--cache", str(cache), *FAST, "--steps", "1"]) == 0
    assert not any(k.startswith("geometry/") for r in _metrics(out) for k in r)
    assert "monitor" not in json.loads((out / "run.json").read_text())
    argv = ["--out", str(tmp_path / "bad"), "--cache", str(cache), *FAST, "--monitor-every", "-1"]
    assert sft.main(argv) == 2
    assert "--monitor-every must be >= 0" in capsys.readouterr().err


def test_monitor_stop_ends_the_loop(tmp_path, cache, monkeypatch):
    class Stopping(paramgeom.monitor.GeometryMonitor):
        def step(self, step, force=False):  # as on_lock="stop" does at a detected lock
            rec = super().step(step, force)
            self.should_stop = rec is not None
            return rec

    monkeypatch.setattr(paramgeom.monitor, "GeometryMonitor", Stopping)
    out = tmp_path / "stop"
    assert sft.main(["--out", str(out), "--cache", str(cache), *FAST,
                     "--monitor-every", "2"]) == 0  # fmt: skip
    info = json.loads((out / "run.json").read_text())
    assert info["steps_done"] == 2 and 2 in info["checkpoints"] and 3 not in info["checkpoints"]
