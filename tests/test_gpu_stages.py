"""The staged GPU script (benchmarks/gpu_bench.sh and benchmarks/gpu/) without a GPU: every
stage parses, the timer writes its JSON, and stage 2's plumbing runs end to end on the CPU
(DRY_RUN=1). The GPU figures themselves come only from a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted((ROOT / "benchmarks" / "gpu").glob("stage*.sh"))


@pytest.mark.parametrize("script", [ROOT / "benchmarks" / "gpu_bench.sh", *STAGES],
                         ids=lambda p: p.name)  # fmt: skip
def test_stage_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_three_stages_exist_and_the_dispatcher_refuses_others():
    assert [p.name for p in STAGES] == [
        "stage1_build_test.sh", "stage2_bench.sh", "stage3_diff.sh",
    ]  # fmt: skip
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), "9"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_timer_writes_wall_rss_and_status(tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "timed.py"), str(out), "--",
         sys.executable, "-c", "import sys; x = bytearray(50 << 20); sys.exit(3)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 3
    got = json.loads(out.read_text())
    assert got["rc"] == 3 and got["wall_s"] > 0
    assert got["peak_rss_kib"] > 50 << 10  # the child's 50 MiB buffer


def test_stage2_dry_run_writes_its_json(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_bench.sh"), "2"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "stage2.json").read_text()) == {"stage": 2, "ok": True}
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert bench["limits"]["copy_gbps"] > 0
