"""Units computed side by side (``paramgeom diff --workers``): the same figures, bit for bit,
whatever the worker count and torch's thread count; results journaled in order; a failing
unit or read keeps what the other workers computed; one thread per unit, restored after."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from workers import runs_across_workers

from paramgeom.cli import main
from paramgeom.engine.diff import run_diff
from paramgeom.engine.pipeline import _computed, default_workers


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """Matrices wide enough for the float32-then-Ritz path (min side >= 512), a small one,
    a vector: every kind of row."""
    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (600, 520), "b.weight": (520, 640), "c.weight": (530, 530),
              "d.weight": (40, 24), "e.bias": (96,)}  # fmt: skip
    base = {n: torch.randn(s, generator=g).to(torch.bfloat16) for n, s in shapes.items()}
    tuned = {
        n: (w.float() + 0.01 * torch.randn(w.shape, generator=g)).to(torch.bfloat16)
        for n, w in base.items()
    }
    for name, d in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        save_file(d, str(tmp_path / name / "model.safetensors"))
    return tmp_path / "base", tmp_path / "tuned"


def test_figures_do_not_depend_on_workers_or_threads(tmp_path):
    base, tuned = _pair(tmp_path)
    runs = runs_across_workers(
        lambda out, workers: run_diff(base, tuned, out, quiet=True, workers=workers), tmp_path
    )
    outs = [(out / "tensors.csv").read_bytes() for out, _ in runs]
    assert all(o == outs[0] for o in outs[1:])
    rows = outs[0].decode().splitlines()
    assert len(rows) == 6 and "a.weight" in outs[0].decode()


def test_cli_refuses_zero_workers(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["diff", str(base), str(tuned), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_default_workers(monkeypatch):
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    by_memory = max(1, memory // (4 << 30))  # four 1 GiB budgets per worker
    assert default_workers(torch.device("cpu")) == min(torch.get_num_threads(), by_memory)
    assert default_workers(torch.device("meta")) == 0  # not CPU: one at a time
    # Bounded by memory: 4 budgets per unit in flight, at least one worker.
    before = torch.get_num_threads()
    torch.set_num_threads(64)
    try:
        assert default_workers(torch.device("cpu"), memory // 8) == 2
        assert default_workers(torch.device("cpu"), memory) == 1
        assert default_workers(torch.device("cpu"), 1) == 64
        monkeypatch.setattr(os, "sysconf", lambda name: (_ for _ in ()).throw(OSError(name)))
        assert default_workers(torch.device("cpu"), memory) == 64  # unknown memory: no bound
    finally:
        torch.set_num_threads(before)


class _Unit:
    def __init__(self, i: int) -> None:
        self.name = f"u{i}"
        self.i = i


def _queue(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise OSError(f"read of u{i} failed")
        yield _Unit(i), i


def test_in_order_and_side_by_side():
    meet = threading.Barrier(2, timeout=30)  # both of the first two units must run at once
    threads_seen = []

    def run(unit, loaded):
        threads_seen.append(torch.get_num_threads())
        if unit.i < 2:
            meet.wait()
        time.sleep(0.002 * ((7 * unit.i) % 5))  # finish out of order
        return loaded * 10

    got = list(_computed(_queue(9), run, workers=2))
    assert [(u.i, r) for u, r in got] == [(i, 10 * i) for i in range(9)]
    assert threads_seen == [1] * 9


def test_workers_products_have_the_bits_of_one_thread():
    """A worker's products, also before any parallel torch op in its thread, run on one MKL
    thread: a thread torch has not seen yet runs MKL at the process-wide count (the cores),
    and a tall Gram's bits follow it (it failed so on the 2-core VM before workers set their
    count: every unit's Gram differed from the one-thread result)."""
    x = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        want = x.T @ x
    finally:
        torch.set_num_threads(before)
    got = list(_computed(_queue(4), lambda u, _: x.T @ x, workers=2))
    assert len(got) == 4 and all(torch.equal(r, want) for _, r in got)


def test_one_at_a_time_keeps_torch_threads():
    before = torch.get_num_threads()
    seen = []
    got = list(_computed(_queue(3), lambda u, x: seen.append(torch.get_num_threads()) or x, 0))
    assert [r for _, r in got] == [0, 1, 2] and seen == [before] * 3


def test_failed_unit_keeps_what_the_others_computed():
    started = threading.Barrier(2, timeout=30)

    def run(unit, loaded):
        if unit.i in (2, 3):
            started.wait()  # 2 and 3 run side by side; 3 succeeds after 2 has failed
        if unit.i == 2:
            raise RuntimeError("unit 2 broke")
        if unit.i == 3:
            time.sleep(0.05)
        return loaded

    got = []
    with pytest.raises(RuntimeError, match="unit 2 broke"):
        for unit, _ in _computed(_queue(8), run, workers=2):
            got.append(unit.i)
    assert got[:2] == [0, 1] and 3 in got and 2 not in got
    assert max(got) <= 4  # nothing started after the failure was seen


def test_failed_read_keeps_what_the_workers_computed():
    got = []
    with pytest.raises(OSError, match="read of u3 failed"):
        for unit, _ in _computed(_queue(6, fail_at=3), lambda u, x: x, workers=2):
            got.append(unit.i)
    assert got == [0, 1, 2]


def test_inline_units_run_here_in_order():
    here = threading.current_thread()
    where = {}

    def run(unit, loaded):
        where[unit.i] = threading.current_thread() is here
        time.sleep(0.002 * ((3 * unit.i) % 4))
        if unit.i == 5:
            raise ValueError("inline unit 5 broke")
        return loaded

    got = []
    with pytest.raises(ValueError, match="inline unit 5 broke"):
        for unit, r in _computed(_queue(9), run, workers=2, inline=lambda u: u.i % 2 == 1):
            got.append((unit.i, r))
    assert got[:5] == [(i, i) for i in range(5)]
    assert all(where[i] == (i % 2 == 1) for i in where)
