"""The drivers on a full disk (DESIGN.md "Command line", the reliability contract): exit
status 2 with one line naming the file, no traceback, nothing already written lost, and
checkpoint folders complete or absent (written as hidden temporaries and renamed); a
temporary left by a killed run is invisible to checkpoint listings and removed by the
rerun."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from paramgeom.drivers import loop, opd  # noqa: E402
from paramgeom.drivers.errors import DriverError  # noqa: E402
from paramgeom.drivers.models import build_model, load_model, save_model  # noqa: E402
from paramgeom.drivers.storage import is_temporary  # noqa: E402
from paramgeom.drivers.task import CharTokenizer  # noqa: E402

FAST = ["--save-every", "1", "--eval-size", "16", "--eval-every", "2", "--threads", "1",
        "--quiet", "--prompts", "4", "--samples", "4"]  # fmt: skip
# The tiny model's bf16 model.safetensors is ~1.7 MB; config, tokenizer, run.json and
# metrics.jsonl stay far below this limit, so the first weights file fails mid-write.
FSIZE = 200_000


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny untrained student and teacher (OPD needs no trained models to run)."""
    root = tmp_path_factory.mktemp("models")
    tok = CharTokenizer()
    save_model(build_model("tiny", tok, seed=0), root / "student", tok)
    save_model(build_model("tiny", tok, seed=1), root / "teacher", tok)
    return root / "student", root / "teacher"


def _argv(out: Path, models: tuple[Path, Path], steps: int = 2) -> list[str]:
    return ["--out", str(out), "--model", str(models[0]), "--teacher", str(models[1]),
            "--steps", str(steps), *FAST]  # fmt: skip


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_folder(out: Path) -> list[int]:
    """No temporaries in ``out`` and every ``checkpoint-*`` folder loads; its steps."""
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if is_temporary(n) or ".tmp" in n], names
    steps = loop.saved_steps(out)
    assert len(steps) == len([n for n in names if n.startswith("checkpoint-")])
    for s in steps:
        ck = out / f"checkpoint-{s}"
        for name in ("config.json", "model.safetensors", "paramgeom_tokenizer.json",
                     "paramgeom_checkpoint.json"):  # fmt: skip
            assert (ck / name).is_file(), (ck, name)
        load_model(ck)
        assert json.loads((ck / "paramgeom_checkpoint.json").read_text())["step"] == s
    return steps


def _one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _full_disk() -> None:
    # Runs in the child: writes past FSIZE bytes fail with EFBIG instead of killing it.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_full_disk_subprocess(tmp_path, models):
    """The attacker's case: the opd driver with writes limited by RLIMIT_FSIZE."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "paramgeom.drivers.opd", *_argv(out, models)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=_full_disk)  # fmt: skip
    assert p.returncode == 2, p.stderr
    line = _one_line(p.stderr, "checkpoint-0", "model.safetensors", "File too large")
    assert line.startswith("python -m paramgeom.drivers.opd: error: cannot write ")
    assert _check_folder(out) == []  # checkpoint-0 absent, not half there
    assert [r["step"] for r in _metrics(out)] == [0]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "model.safetensors" in info["error"]
    assert info["checkpoints"] == []


def _enospc_on_call(monkeypatch, fail_at: int) -> list[str]:
    """The safetensors writer of transformers writes half a file, then raises ENOSPC on its
    ``fail_at``-th call (1-based)."""
    import transformers.modeling_utils as mu

    real = mu.safe_save_file
    calls: list[str] = []

    def save_file(tensors, filename, metadata=None):
        calls.append(str(filename))
        if len(calls) == fail_at:
            Path(filename).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(mu, "safe_save_file", save_file)
    return calls


def test_enospc_at_a_later_checkpoint(tmp_path, models, monkeypatch, capsys):
    """checkpoint-2 of 3 fails: checkpoints 0 and 1 and the metrics up to step 2 stay."""
    _enospc_on_call(monkeypatch, fail_at=3)
    out = tmp_path / "run"
    assert opd.main(_argv(out, models, steps=3)) == 2
    _one_line(capsys.readouterr().err, f"cannot write {out}/checkpoint-2/model.safetensors",
              "No space left on device")  # fmt: skip
    assert _check_folder(out) == [0, 1]
    assert [r["step"] for r in _metrics(out)] == [0, 1, 2]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["checkpoints"] == [0, 1]


def test_save_model_keeps_the_previous_folder(tmp_path, monkeypatch):
    """A failed save into an existing folder leaves that folder as it was, no temporary."""
    tok = CharTokenizer()
    model = build_model("tiny", tok, seed=0)
    folder = save_model(model, tmp_path / "m", tok, extra={"step": 1})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _enospc_on_call(monkeypatch, fail_at=1)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(DriverError, match=r"cannot write .*m/model\.safetensors: No space"):
        save_model(model, folder, tok, extra={"step": 2})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    # and a save that succeeds replaces the folder whole
    monkeypatch.undo()
    save_model(model, folder, tok, extra={"step": 2})
    assert json.loads((folder / "paramgeom_checkpoint.json").read_text()) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


class _FillingFile:
    """A file that accepts ``room`` bytes (the last write short), then fails with ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        if self._room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._f.write(bytes(data)[: self._room])
        self._room -= n
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_metrics_write_fails(tmp_path, models, monkeypatch, capsys):
    """A full disk while appending to metrics.jsonl: one line naming it, and the file is
    cut back to its last whole record."""
    out = tmp_path / "run"
    room = {}

    def filling_open(path, *args, **kwargs):
        f = open(path, *args, **kwargs)  # noqa: SIM115 (returned)
        if Path(path).name != "metrics.jsonl":
            return f
        room["bytes"] = 120  # step 0's record fits, step 1's is cut short
        return _FillingFile(f, room["bytes"])

    monkeypatch.setattr(loop, "open", filling_open, raising=False)
    assert opd.main(_argv(out, models)) == 2
    _one_line(capsys.readouterr().err, f"cannot write {out / 'metrics.jsonl'}: No space left")
    assert room  # the loop opened metrics.jsonl through the patched open
    assert [r["step"] for r in _metrics(out)] == [0]  # no half record
    assert _check_folder(out) == [0]
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_run_json_write_fails(tmp_path, models, capsys):
    """run.json cannot be written (its temporary is a folder): one line naming it."""
    out = tmp_path / "run"
    (out / "run.json.tmp").mkdir(parents=True)
    assert opd.main(_argv(out, models)) == 2
    _one_line(capsys.readouterr().err, f"cannot write {out / 'run.json'}: Is a directory")
    assert not (out / "run.json").exists()


def test_killed_mid_save_is_ignored_and_cleaned(tmp_path, models):
    """A temporary left by a killed run: listings never see it, the rerun removes it, and
    the rerun (how ``paramgeom reproduce`` resumes a run: the same command, --overwrite)
    writes the same checkpoints as an uninterrupted run."""
    from paramgeom.reproduce.plan import checkpoints

    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint-0.tmp-999999").mkdir()  # a fresh folder with a stale temporary only
    assert opd.main(_argv(out, models)) == 0
    assert _check_folder(out) == [0, 1, 2]
    done = {s: _tensors(out / f"checkpoint-{s}") for s in (1, 2)}

    # Killed while saving checkpoint-2: only its config was written, into the temporary.
    stale = out / ".checkpoint-2.tmp-999999"
    (out / "checkpoint-2").rename(stale)
    (stale / "model.safetensors").unlink()
    (out / ".checkpoint-1.tmp-999999-old").mkdir()
    info = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert loop.saved_steps(out) == [0, 1]
    assert checkpoints(out) == [out / "checkpoint-1"]

    assert opd.main(_argv(out, models)) == 2  # a run is there: --overwrite needed
    assert stale.is_dir()
    assert opd.main([*_argv(out, models), "--overwrite"]) == 0
    assert _check_folder(out) == [0, 1, 2]
    assert json.loads((out / "run.json").read_text())["status"] == "done"
    for s, tensors in done.items():
        again = _tensors(out / f"checkpoint-{s}")
        assert again.keys() == tensors.keys()
        assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_pretrain_full_disk_leaves_no_cache_entry(tmp_path, monkeypatch, capsys):
    """``paramgeom.drivers.pretrain``: the cache entry is complete or absent as well."""
    from paramgeom.drivers import pretrain

    _enospc_on_call(monkeypatch, fail_at=1)
    cache = tmp_path / "cache"
    argv = ["--role", "teacher", "--cache", str(cache), "--teacher-steps", "2",
            "--eval-size", "16", "--threads", "1", "--quiet"]  # fmt: skip
    assert pretrain.main(argv) == 2
    _one_line(capsys.readouterr().err, "model.safetensors: No space left on device")
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert pretrain.main(argv) == 0
    capsys.readouterr()
    (entry,) = cache.iterdir()
    assert (entry / "model.safetensors").is_file() and (entry / "paramgeom_recipe.json").is_file()
