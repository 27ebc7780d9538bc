"""Hostile and changing inputs (issue: every case a clear error, nothing lost, nothing
silently wrong). Each test here failed before its fix: a crash, a hang, a traceback, an
unclear message or a silently wrong figure; each now asserts the contract (exit 2 and one
line naming the file and tensor, or exit 0 with the right figures)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from contract import one_line_error as _bad
from safetensors.torch import load_file, save_file

from paramgeom.checkpoints.fp8 import quantize_blocks
from paramgeom.cli import main
from paramgeom.engine import diff as diff_module
from paramgeom.engine.journal import Journal

UP = "model.layers.0.mlp.up_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"
NORM = "model.norm.weight"


def _weights(seed: int, shape=(16, 12)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        UP: torch.randn(*shape, generator=g).to(torch.bfloat16),
        DOWN: torch.randn(shape[1], shape[0], generator=g).to(torch.bfloat16),
        NORM: (1 + 0.1 * torch.randn(shape[1], generator=g)).to(torch.bfloat16),
    }


def _save(folder: Path, tensors) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(folder / "model.safetensors"))
    return folder


def _pair(tmp_path: Path, shape=(16, 12)) -> tuple[Path, Path]:
    base = _weights(0, shape)
    g = torch.Generator().manual_seed(1)
    tuned = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(v.dtype)
             for k, v in base.items()}  # fmt: skip
    return _save(tmp_path / "base", base), _save(tmp_path / "tuned", tuned)


def _run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _within(seconds: float, fn):
    """``fn()`` on a thread; a call still running after ``seconds`` is a hang (fails)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for more than {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _script(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter (a SIGBUS or segfault there fails the test
    instead of killing pytest)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)], cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


# ------------------------------------------------------------- 1. shrinking file: no SIGBUS


def test_zero_copy_read_of_a_file_truncated_under_it_does_not_crash(tmp_path):
    """The engine's zero-copy view outlives a truncation of its file: touching it reads
    zeros instead of killing the process, the fault is counted and verify() refuses."""
    proc = _script(
        f"""
        import os, torch
        from safetensors.torch import save_file
        from paramgeom import _C
        from paramgeom.checkpoints import reader
        from paramgeom.checkpoints.errors import CheckpointError
        path = {str(tmp_path / "big.safetensors")!r}
        save_file({{"w": torch.ones(1024, 1024)}}, path)
        with reader.open_checkpoint(path) as ck:
            before = reader.mapped_fault_count()
            view = ck.read("w", copy=False)
            os.truncate(path, 4096)
            total = float(view.sum())  # faults on every page past the new end
            assert reader.mapped_fault_count() > before
            assert total < 1024 * 1024, total  # the vanished pages read as zeros
            try:
                ck.verify(["w"])
            except CheckpointError as exc:
                print("refused:", exc)
            assert _C.mapped_live_count() == 1
            del view
            assert _C.mapped_live_count() == 0  # the mapping went with its last view
        """,
        tmp_path,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "refused:" in proc.stdout and "file changed" in proc.stdout, proc.stdout


def test_diff_when_a_shard_is_truncated_mid_run(tmp_path):
    """The tuned file is truncated after the engine mapped a tensor and before the kernels
    read it (the issue's repro, made deterministic): exit 2, one line naming the file,
    nothing of that unit journaled (was: SIGBUS, exit -7/135, no message)."""
    proc = _script(
        f"""
        import os, sys, torch
        from pathlib import Path
        from safetensors.torch import save_file
        from paramgeom.cli import main
        from paramgeom.engine import diff as d
        root = Path({str(tmp_path)!r})
        for side, seed in (("base", 0), ("tuned", 1)):
            (root / side).mkdir()
            g = torch.Generator().manual_seed(seed)
            save_file({{"model.layers.0.mlp.up_proj.weight":
                        torch.randn(1024, 1024, generator=g).to(torch.bfloat16)}},
                      str(root / side / "model.safetensors"))
        real = d.compute_unit
        def truncating(streamer, unit, loaded):
            os.truncate(root / "tuned" / "model.safetensors", 4096)
            return real(streamer, unit, loaded)
        d.compute_unit = truncating
        sys.exit(main(["diff", str(root / "base"), str(root / "tuned"), "--out",
                       str(root / "out"), "--quiet", "--no-angles"]))
        """,
        tmp_path,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(tmp_path / "tuned" / "model.safetensors") in lines[0]
    assert "changed" in lines[0]
    journal = tmp_path / "out" / "journal" / "diff.rank0.jsonl"
    assert not journal.exists() or journal.read_bytes() == b""


# ------------------------------------------------------ 4. same-size rewrite in place mid-run


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["plain", "mtime-set-back"])
def test_file_rewritten_in_place_mid_run(tmp_path, capsys, monkeypatch, restore_mtime):
    """Rewritten with the same size while its tensor is computed: 'file changed', never
    figures (was: 'non-finite values in the Gram matrix' or a LinAlgError traceback). With
    the mtime set back by utime, the ctime still tells. One tensor, so that no later read
    of the file can notice the change first."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 12, generator=g)
    base = _save(tmp_path / "base", {UP: w.to(torch.bfloat16)})
    tuned = _save(tmp_path / "tuned", {UP: (w + 0.05).to(torch.bfloat16)})
    path = tuned / "model.safetensors"
    real = diff_module.compute_unit
    done = []

    def rewriting(streamer, unit, loaded):
        if not done:
            st = os.stat(path)
            data = bytearray(path.read_bytes())
            n = struct.unpack("<Q", data[:8])[0]
            data[8 + n :] = b"\xff" * (len(data) - 8 - n)  # every value NaN, same size
            path.write_bytes(bytes(data))
            if restore_mtime:
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            done.append(True)
        return real(streamer, unit, loaded)

    monkeypatch.setattr(diff_module, "compute_unit", rewriting)
    out = tmp_path / "out"
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet")
    line = _bad(code, err, path, UP)
    assert "file changed since the checkpoint was opened" in line
    assert ("ctime_ns" in line) == restore_mtime or "mtime_ns" in line
    journal = out / "journal" / "diff.rank0.jsonl"  # the garbage figures were not kept
    assert not journal.exists() or journal.read_bytes() == b""


# ----------------------------------------------------------------------------- 2, 11. FP8


def _fp8_side(folder: Path, w: torch.Tensor, scaled: bool, bad_scale: bool = False) -> Path:
    q, scale = quantize_blocks(w)
    tensors = {UP: q, NORM: torch.ones(4, dtype=torch.bfloat16)}
    if scaled:
        tensors[UP + "_scale_inv"] = scale[:, :1].contiguous() if bad_scale else scale
    return _save(folder, tensors)


def test_fp8_scale_on_one_side_only_is_a_mismatch(tmp_path, capsys):
    """Was: raw FP8 codes compared with dequantised values, exit 0, relative change 5269."""
    g = torch.Generator().manual_seed(0)
    w = 1e-3 * torch.randn(256, 256, generator=g)
    base = _fp8_side(tmp_path / "base", w, scaled=True)
    tuned = _fp8_side(tmp_path / "tuned", w * 1.01, scaled=False)
    code, err = _run(capsys, "diff", base, tuned, "--out", tmp_path / "out", "--quiet")
    line = _bad(code, err, tuned / "model.safetensors", UP)
    assert "one side only" in line


def test_misshaped_fp8_scale_is_refused_before_any_unit_runs(tmp_path, capsys):
    """Was: caught at compute time, after earlier units had run."""
    g = torch.Generator().manual_seed(0)
    w = 1e-3 * torch.randn(256, 256, generator=g)
    # Small matrices stored before the FP8 weight: units that would have run first.
    extra = {f"model.layers.{i}.mlp.gate_proj.weight": torch.randn(8, 8).to(torch.bfloat16)
             for i in range(3)}  # fmt: skip
    base = _fp8_side(tmp_path / "base", w, scaled=True)
    tuned = _fp8_side(tmp_path / "tuned", w, scaled=True, bad_scale=True)
    for side in (base, tuned):  # add the same small matrices to both sides
        t = load_file(str(side / "model.safetensors"))
        t.update(extra)
        save_file(t, str(side / "model.safetensors"))
    out = tmp_path / "out"
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet")
    line = _bad(code, err, tuned / "model.safetensors", UP + "_scale_inv")
    assert "does not fit" in line
    assert not (out / "journal" / "diff.rank0.jsonl").exists()


# ---------------------------------------------------------------------- 5. finite extremes


def _extremes(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    mx = torch.finfo(torch.bfloat16).max
    g = torch.Generator().manual_seed(0)
    s0 = torch.where(torch.rand(24, 16, generator=g) < 0.5, -mx, mx).to(torch.bfloat16)
    s1 = torch.where(torch.rand(24, 16, generator=g) < 0.5, -mx, mx).to(torch.bfloat16)
    return _save(tmp_path / "base", {UP: s0}), _save(tmp_path / "step-1", {UP: s1}), s0, s1


def _oracle_stable_rank(w0: torch.Tensor, w1: torch.Tensor) -> float:
    d = w1.double() - w0.double()
    s = torch.linalg.svdvals(d)
    return float((s**2).sum() / s[0] ** 2)


def test_finite_extremes_give_finite_figures_in_diff(tmp_path, capsys):
    """Every value at +-bf16 max: dW overflows fp32. Was: LinAlgError traceback, exit 1."""
    base, tuned, w0, w1 = _extremes(tmp_path)
    out = tmp_path / "out"
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet", "--rank", 4)
    assert code == 0, err
    row = json.loads((out / "summary.json").read_text())["model"]
    assert row["n_nonfinite"] == 0
    for key in ("stable_rank_mean", "effective_rank_mean", "angle_left_max_max",
                "spectral_drift_mean", "frobenius_delta"):  # fmt: skip
        assert row[key] is not None and math.isfinite(row[key]), (key, row[key])
    want = _oracle_stable_rank(w0, w1)
    assert row["stable_rank_mean"] == pytest.approx(want, rel=1e-6)
    d = w1.double() - w0.double()
    assert row["frobenius_delta"] == pytest.approx(float(d.norm()), rel=1e-12)


def test_finite_extremes_give_finite_figures_in_trajectory(tmp_path, capsys):
    """Was: exit 2 with 'non-finite values (NaN/Inf) in w1 - w0', naming no file."""
    base, step1, w0, w1 = _extremes(tmp_path)
    out = tmp_path / "out"
    code, err = _run(capsys, "trajectory", base, step1, "--out", out, "--quiet", "--k", 2)
    assert code == 0, err
    import pyarrow.parquet as pq

    row = pq.read_table(out / "trajectory.parquet").to_pylist()[0]
    assert row["n_nonfinite"] == 0
    assert math.isfinite(row["stable_rank"]) and math.isfinite(row["sim_k"])
    # The range finder's top singular value is accurate to its own tolerance (not exact).
    assert row["stable_rank"] == pytest.approx(_oracle_stable_rank(w0, w1), rel=1e-3)


# ---------------------------------------------------------------------------- 6. FIFO


@pytest.mark.parametrize("where", ["file", "shard", "index", "config"])
def test_fifo_is_refused_without_hanging(tmp_path, capsys, where):
    base, tuned = _pair(tmp_path)
    fifo = tmp_path / "fifo_side"
    fifo.mkdir()
    if where == "file":
        target = fifo / "model.safetensors"
        os.mkfifo(target)
        tuned_arg = target
    elif where == "shard":
        target = fifo / "model-00001-of-00001.safetensors"
        os.mkfifo(target)
        (fifo / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {UP: target.name}})
        )
        tuned_arg = fifo
    elif where == "index":
        target = fifo / "model.safetensors.index.json"
        os.mkfifo(target)
        tuned_arg = target
    else:  # config.json beside a good checkpoint: read for the tied-embedding rule
        (fifo / "model.safetensors").write_bytes((tuned / "model.safetensors").read_bytes())
        os.mkfifo(fifo / "config.json")
        tuned_arg = fifo
    code, err = _within(60, lambda: _run(capsys, "diff", base, tuned_arg, "--out",
                                         tmp_path / "out", "--quiet", "--no-spectra"))  # fmt: skip
    if where == "config":  # an unreadable config is no config (as a corrupt one is)
        assert code == 0, err
        return
    line = _bad(code, err, target.name)
    assert "FIFO" in line or "not a file" in line


# ----------------------------------------------------------------- 7. tracebacks turned into lines


def test_header_of_deeply_nested_brackets(tmp_path, capsys):
    base, _ = _pair(tmp_path)
    bad = tmp_path / "nested.safetensors"
    header = b"[" * 100_000 + b"]" * 100_000
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    code, err = _run(capsys, "diff", base, bad, "--out", tmp_path / "out", "--quiet")
    assert "nested too deeply" in _bad(code, err, bad)


def test_journal_entries_of_the_wrong_shape_are_recomputed(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"
    assert _run(capsys, "diff", base, tuned, "--out", out, "--quiet", "--rank", 4)[0] == 0
    good = (out / "tensors.csv").read_bytes()
    journal = out / "journal" / "diff.rank0.jsonl"
    lines = journal.read_text().splitlines()
    broken = []
    for i, line in enumerate(lines):
        entry = json.loads(line)
        entry["rows"] = {"not": "a list"} if i == 0 else entry["rows"]
        entry["notes"] = 5 if i == 1 else entry["notes"]
        broken.append(json.dumps(entry))
    journal.write_text("\n".join(broken) + "\n")
    (out / "tensors.csv").unlink()
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet", "--rank", 4)
    assert code == 0, err
    assert (out / "tensors.csv").read_bytes() == good


def test_directory_where_the_journal_file_should_be(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"
    (out / "journal" / "diff.rank0.jsonl").mkdir(parents=True)
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet")
    _bad(code, err, "diff.rank0.jsonl")


# --------------------------------------------------------------------- 8, 9. unclear or silent


def test_shape_with_a_dimension_near_2_63_beside_a_zero(tmp_path, capsys):
    """[2^63, 0] has 0 bytes, so the byte count passed it; it then failed deep in C++."""
    base, _ = _pair(tmp_path)
    bad = tmp_path / "huge.safetensors"
    header = json.dumps({UP: {"dtype": "BF16", "shape": [2**63, 0], "data_offsets": [0, 0]}})
    bad.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    code, err = _run(capsys, "diff", base, bad, "--out", tmp_path / "out", "--quiet")
    assert "2^48" in _bad(code, err, bad, UP)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["diff", "a", "b", "--out", "o", "--rank", "0"], "--rank"),
        (["diff", "a", "b", "--out", "o", "--rel-tol", "nan"], "--rel-tol"),
        (["diff", "a", "b", "--out", "o", "--atol", "-1"], "--atol"),
        (["trajectory", "a", "b", "--out", "o", "--lock-threshold", "nan"], "--lock-threshold"),
        (["trajectory", "a", "b", "--out", "o", "--lock-threshold", "0"], "--lock-threshold"),
        (["trajectory", "a", "b", "--out", "o", "--k", "0"], "--k"),
    ],
)
def test_bad_flag_values_name_the_flag(capsys, args, flag):
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert _bad(2, err, flag).startswith(f"paramgeom {args[0]}: error: argument {flag}")


def test_duplicate_key_in_an_index_weight_map(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes((tuned / "model.safetensors").read_bytes())
    (folder / "b.safetensors").write_bytes((tuned / "model.safetensors").read_bytes())
    text = f'{{"weight_map": {{"{UP}": "a.safetensors", "{UP}": "b.safetensors"}}}}'
    (folder / "model.safetensors.index.json").write_text(text)
    code, err = _run(capsys, "diff", base, folder, "--out", tmp_path / "out", "--quiet")
    assert "duplicate key" in _bad(code, err, "model.safetensors.index.json", UP)


# ------------------------------------------------------------------ 10. NaN/Inf in trajectory


def test_trajectory_counts_nonfinite_values(tmp_path, capsys):
    base = _weights(0)
    step = {k: v.clone() for k, v in base.items()}
    step[UP][0, 0] = float("nan")
    step[UP][1, 1] = float("inf")
    b = _save(tmp_path / "base", base)
    s = _save(tmp_path / "checkpoint-10", step)
    out = tmp_path / "out"
    code, err = _run(capsys, "trajectory", b, s, "--out", out, "--quiet", "--k", 2)
    assert code == 0, err
    import pyarrow.parquet as pq

    rows = {r["name"]: r for r in pq.read_table(out / "trajectory.parquet").to_pylist()}
    assert rows[UP]["n_nonfinite"] == 2 and rows[DOWN]["n_nonfinite"] == 0
    assert rows[UP]["stable_rank"] is None
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert any(UP in n and "2 NaN/Inf" in n for n in notes), notes


# --------------------------------------------------------------------- 12. one run per --out


def test_second_run_into_the_same_out_is_refused_while_the_first_runs(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"
    first = Journal(out, "diff", 0)
    first.acquire()  # what a running `paramgeom diff` holds
    try:
        code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet")
        assert "another paramgeom diff is running" in _bad(code, err, out)
    finally:
        first.close()
    code, err = _run(capsys, "diff", base, tuned, "--out", out, "--quiet")
    assert code == 0, err  # the lock went with the first run
