"""A training run's folder in place of its checkpoints (``paramgeom trajectory BASE RUN``):
sub-folders named by step (``step-N`` torchtitan, ``global_step_N`` verl, ``checkpoint-N``,
``iter_N`` Megatron) taken in numeric step order; mixed formats pair by the naming rules
(an HF safetensors base against DCP step folders with ``model.``-prefixed keys and
optimizer state beside them)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.engine.trajectory import expand_runs, run_checkpoints

NAMES = ("model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.o_proj.weight")


def _weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name in NAMES:
        w = torch.randn(24, 16, generator=g)
        drift = torch.randn(24, 16, generator=torch.Generator().manual_seed(step)) * 1e-2
        out[name] = (w + drift * (step > 0) * (1 + step / 100)).bfloat16()
    return out


def _dcp_save(state: dict, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=str(folder))


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    base = tmp_path / "base"
    base.mkdir()
    save_file(_weights(0), base / "model.safetensors")
    run = tmp_path / "run"
    for step in (100, 9, 20):  # written out of order; step-100 sorts before step-20 as text
        model = {k.removeprefix("model."): v for k, v in _weights(step).items()}
        opt = {"state": {k: {"exp_avg": torch.zeros(3)} for k in model}}
        _dcp_save({"model": model, "optimizer": opt}, run / f"step-{step}")
    (run / "logs").mkdir()  # other folders are ignored
    (run / "step-notes.txt").write_text("not a checkpoint")
    return base, run


def test_run_folder_lists_step_folders_in_numeric_order(run):
    _, folder = run
    assert [p.name for p in run_checkpoints(folder)] == ["step-9", "step-20", "step-100"]
    assert [Path(p).name for p in expand_runs([folder])] == ["step-9", "step-20", "step-100"]


def test_a_checkpoint_folder_is_not_a_run(run, tmp_path):
    base, folder = run
    assert run_checkpoints(base) is None  # holds model.safetensors
    assert run_checkpoints(folder / "step-9") is None  # a DCP folder itself
    assert run_checkpoints(tmp_path / "nothing") is None


@pytest.mark.parametrize("names", [("global_step_5", "global_step_40"),
                                   ("iter_0000050", "iter_0000100"),
                                   ("checkpoint-7", "checkpoint-70")])  # fmt: skip
def test_trainer_spellings(tmp_path, names):
    for n in reversed(names):
        (tmp_path / n).mkdir()
    assert [p.name for p in run_checkpoints(tmp_path)] == list(names)


def test_two_folders_of_one_step_are_an_error(tmp_path):
    (tmp_path / "step-5").mkdir()
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(CheckpointError, match="two checkpoints of step 5"):
        run_checkpoints(tmp_path)


def test_trajectory_over_a_run_folder_of_dcp_checkpoints(run, tmp_path):
    base, folder = run
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "trajectory", str(base), str(folder),
         "--out", str(out), "--quiet", "--k", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out / "trajectory.parquet").to_pylist()
    assert sorted({r["step"] for r in rows}) == [9, 20, 100]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_given"] == [9, 20, 100]
    assert any("optimizer state" in n for n in summary["notes"]), summary["notes"]
    # The same trajectory from the three folders named one by one, in order.
    out2 = tmp_path / "out2"
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "trajectory", str(base),
         *(str(folder / f"step-{s}") for s in (9, 20, 100)), "--out", str(out2), "--quiet",
         "--k", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows2 = pq.read_table(out2 / "trajectory.parquet").to_pylist()
    key = lambda r: (r["name"], r["step"])  # noqa: E731
    for a, b in zip(sorted(rows, key=key), sorted(rows2, key=key), strict=True):
        assert a["name"] == b["name"] and a["step"] == b["step"]
        assert a["frobenius_delta"] == b["frobenius_delta"]
