"""Killed runs resume to the same tables; torchrun ranks give the 1-process tables exactly."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from paramgeom.engine.journal import Journal


def _write(folder, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))


def _pair(tmp_path, n_layers=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for layer in range(n_layers):
        for proj, shape in (("q_proj", (32, 32)), ("o_proj", (32, 32)), ("up_proj", (48, 32))):
            block = "mlp" if proj == "up_proj" else "self_attn"
            name = f"model.layers.{layer}.{block}.{proj}.weight"
            w = torch.randn(*shape, generator=g) * 0.02
            d = 1e-3 * torch.randn(shape[0], 2, generator=g) @ torch.randn(2, shape[1], generator=g)
            base[name] = w.bfloat16()
            tuned[name] = (w + d).bfloat16()
    _write(tmp_path / "base", base)
    _write(tmp_path / "tuned", tuned)
    return base, tuned


def _cli(*args, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _tables(out, stem="tensors"):
    return (out / f"{stem}.csv").read_bytes(), (out / f"{stem}.parquet").read_bytes()


def _cells_that_differ(a, b, stem="tensors", limit=10):
    """Where two runs' CSV tables differ, cell by cell (for a failure message)."""
    ra = list(csv.reader(io.StringIO((a / f"{stem}.csv").read_text())))
    rb = list(csv.reader(io.StringIO((b / f"{stem}.csv").read_text())))
    if len(ra) != len(rb) or ra[:1] != rb[:1]:
        return f"{len(ra)} vs {len(rb)} lines; headers {ra[:1]} vs {rb[:1]}"
    out = []
    for i, (x, y) in enumerate(zip(ra, rb, strict=True)):
        out += [f"line {i} ({x[0]}) {ra[0][j]}: {u} vs {v}"
                for j, (u, v) in enumerate(zip(x, y, strict=True)) if u != v]  # fmt: skip
    return "; ".join(out[:limit]) + (f" (+{len(out) - limit} more)" if len(out) > limit else "")


def test_sigkill_mid_run_then_rerun_gives_identical_tables(tmp_path):
    _pair(tmp_path)
    args = ("diff", tmp_path / "base", tmp_path / "tuned", "--rank", 4, "--quiet", "--out")
    t0 = time.perf_counter()
    full = _cli(*args, tmp_path / "full")
    t_full = time.perf_counter() - t0
    assert full.returncode == 0, full.stderr
    killed = _cli(*args, tmp_path / "resumed", env_extra={"PARAMGEOM_KILL_AFTER_UNITS": "7"})
    assert killed.returncode == -signal.SIGKILL
    assert len(Journal(tmp_path / "resumed", "diff").load()) == 7
    assert not (tmp_path / "resumed" / "tensors.csv").exists()
    t0 = time.perf_counter()
    rerun = _cli(*args, tmp_path / "resumed")
    t_rerun = time.perf_counter() - t0
    assert rerun.returncode == 0, rerun.stderr
    assert _tables(tmp_path / "resumed") == _tables(tmp_path / "full"), _cells_that_differ(
        tmp_path / "full", tmp_path / "resumed"
    )
    # The rerun computed only the 11 units left: its journal holds each unit once.
    lines = (tmp_path / "resumed" / "journal" / "diff.rank0.jsonl").read_text().splitlines()
    assert len(lines) == 18
    print(f"uninterrupted {t_full:.2f} s, rerun after kill {t_rerun:.2f} s")


def test_changed_input_invalidates_its_entries(tmp_path):
    base, tuned = _pair(tmp_path)
    args = ("diff", tmp_path / "base", tmp_path / "tuned", "--rank", 4, "--quiet", "--out")
    assert _cli(*args, tmp_path / "out").returncode == 0
    first = _tables(tmp_path / "out")
    tuned = dict(tuned)
    tuned["model.layers.0.self_attn.q_proj.weight"] = base["model.layers.0.self_attn.q_proj.weight"]
    time.sleep(0.01)
    _write(tmp_path / "tuned", tuned)
    assert _cli(*args, tmp_path / "out").returncode == 0
    assert _cli(*args, tmp_path / "fresh").returncode == 0
    assert _tables(tmp_path / "out") == _tables(tmp_path / "fresh") != first


@pytest.mark.parametrize("command", ["diff", "trajectory"])
def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path, command):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    _pair(tmp_path)
    if command == "diff":
        inputs = [tmp_path / "base", tmp_path / "tuned", "--rank", 4]
        stem = "tensors"
    else:
        inputs = [tmp_path / "base", tmp_path / "tuned", "--k", 2]
        stem = "trajectory"
    # Same threads per process in both runs (torchrun's default for several ranks is one):
    # the float64 BLAS/LAPACK post-processing of small sketches may differ in the last bit
    # between thread counts; the kernels and the split into ranks do not change any figure.
    one = _cli(command, *inputs, "--quiet", "--out", tmp_path / "one",
               env_extra={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "paramgeom.cli", command, *map(str, inputs), "--quiet", "--out",
         str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "journal").iterdir()) == [
        f"{command}.rank0.jsonl",
        f"{command}.rank0.lock",  # each rank's run lock (tests/test_hostile_inputs.py)
        f"{command}.rank1.jsonl",
        f"{command}.rank1.lock",
    ]
    assert _tables(tmp_path / "two", stem) == _tables(tmp_path / "one", stem)
