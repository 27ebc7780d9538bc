"""Matrices followed side by side (``paramgeom trajectory --workers``): the same table, bit
for bit, whatever the worker count and torch's thread count; each matrix reads its own
checkpoints on its worker; a failing read keeps what the other workers finished, stops the
failed matrix's reads, and a rerun completes to the clean run's table."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from workers import runs_across_workers

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.cli import main
from paramgeom.engine import trajectory as trajectory_mod
from paramgeom.engine.pipeline import default_workers, resolve_workers
from paramgeom.engine.trajectory import run_trajectory

STEPS = (100, 200, 300)


def _run(tmp_path: Path, layers: int = 3) -> tuple[Path, list[Path]]:
    """A base and three checkpoints of a growing low-rank update: q/o/up matrices per
    layer, one wide enough (96 x 80) that its range finder does real work."""
    g = torch.Generator().manual_seed(0)
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.o_proj": (64, 64), "mlp.up_proj": (96, 80)}
    base, dirs = {}, []
    for layer in range(layers):
        for mod, shape in shapes.items():
            base[f"model.layers.{layer}.{mod}.weight"] = torch.randn(shape, generator=g) * 0.02
    updates = {
        n: torch.randn(w.shape[0], 3, generator=g) @ torch.randn(3, w.shape[1], generator=g)
        for n, w in base.items()
    }
    for name, tensors in [("base", {n: w.bfloat16() for n, w in base.items()})] + [
        (f"checkpoint-{s}", {n: (w + 1e-4 * s / 100 * updates[n]).bfloat16()
                             for n, w in base.items()})
        for s in STEPS
    ]:  # fmt: skip
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
        dirs.append(tmp_path / name)
    return dirs[0], dirs[1:]


def test_table_does_not_depend_on_workers_or_threads(tmp_path):
    base, ckpts = _run(tmp_path)
    runs = runs_across_workers(
        lambda out, workers: run_trajectory(base, ckpts, out, quiet=True, workers=workers),
        tmp_path,
    )
    assert all(summary["run"]["units_computed"] == 9 for _, summary in runs)
    tables = [(out / "trajectory.csv").read_bytes() for out, _ in runs]
    assert all(t == tables[0] for t in tables[1:])
    lines = tables[0].decode().splitlines()
    assert len(lines) == 1 + 9 * len(STEPS)  # a row per matrix and step
    summary = json.loads((tmp_path / "out1-1" / "summary.json").read_text())
    assert "run" not in summary  # figures only; the run's facts are in the returned summary


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "paramgeom-prefetch"]


def test_failed_read_keeps_finished_matrices_and_stops_its_reads(tmp_path, monkeypatch):
    base, ckpts = _run(tmp_path)
    clean = tmp_path / "clean"
    run_trajectory(base, ckpts, clean, quiet=True, workers=2)
    bad = "model.layers.1.self_attn.o_proj.weight"
    real = trajectory_mod.read_stored

    def read_stored(ckpt, ref, *args):
        if ref.name == bad and Path(ckpt.path).name == "checkpoint-200":
            raise CheckpointError(ckpt.path, ref.name, "simulated read failure")
        return real(ckpt, ref, *args)

    monkeypatch.setattr(trajectory_mod, "read_stored", read_stored)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="simulated read failure"):
        run_trajectory(base, ckpts, out, quiet=True, workers=2)
    entries = [json.loads(x) for x in (out / "journal" / "trajectory.rank0.jsonl").open()]
    done = [e["unit"] for e in entries]
    order = [json.loads(x)["unit"] for x in (clean / "journal" / "trajectory.rank0.jsonl").open()]
    assert bad not in done and order.index(bad) > 0
    assert done[: order.index(bad)] == order[: order.index(bad)]  # every earlier one kept
    deadline = time.monotonic() + 5
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _prefetch_threads()  # no matrix goes on reading after the failure

    monkeypatch.setattr(trajectory_mod, "read_stored", real)
    summary = run_trajectory(base, ckpts, out, quiet=True, workers=2)
    assert summary["run"]["units_from_journal"] == len(done)
    assert summary["run"]["units_computed"] == 9 - len(done)
    assert (out / "trajectory.csv").read_bytes() == (clean / "trajectory.csv").read_bytes()


def test_each_matrix_reads_its_own_sides_on_its_worker(tmp_path, monkeypatch):
    """With workers, the main thread reads nothing: each side is read by the prefetch
    thread of the matrix a worker follows, in the order base, then checkpoints."""
    base, ckpts = _run(tmp_path, layers=1)
    real = trajectory_mod.read_stored
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def read_stored(ckpt, ref, *args):
        with lock:
            seen.append((threading.current_thread().name, ref.name, Path(ckpt.path).name))
        return real(ckpt, ref, *args)

    monkeypatch.setattr(trajectory_mod, "read_stored", read_stored)
    run_trajectory(base, ckpts, tmp_path / "out", quiet=True, workers=2)
    assert {thread for thread, _, _ in seen} == {"paramgeom-prefetch"}
    for name in {n for _, n, _ in seen}:
        sides = [c for _, n, c in seen if n == name]
        assert sides == ["base"] + [f"checkpoint-{s}" for s in STEPS]


def test_resolve_workers():
    cpu = torch.device("cpu")
    assert resolve_workers(3, cpu, 1 << 30) == 3
    assert resolve_workers(None, cpu, 1 << 30) == default_workers(cpu, 1 << 30)
    assert resolve_workers(4, torch.device("meta"), 1) == 0  # not CPU: one at a time
    with pytest.raises(ValueError, match="--workers"):
        resolve_workers(0, cpu, 1)


def test_cli_refuses_zero_workers(tmp_path, capsys):
    base, ckpts = _run(tmp_path, layers=1)
    with pytest.raises(SystemExit) as exc:
        main(["trajectory", str(base), *map(str, ckpts), "--out", str(tmp_path / "o"),
              "--workers", "0"])  # fmt: skip
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err
