"""``paramgeom diff`` on bad input, through the command line (DESIGN.md "Reliability contract").

Every bad input must end with exit status 2 and exactly one line on stderr that names the file
(and the tensor, where one is involved), never a traceback, and must lose nothing already
computed: an output folder holding an earlier run's results is left as it was, and units
journaled before a failure are not computed again by the rerun.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import struct
from pathlib import Path

import pytest
import torch
from contract import one_line_error as _bad
from safetensors.torch import save_file

from paramgeom.checkpoints import reader
from paramgeom.cli import main
from paramgeom.engine import journal as journal_module
from paramgeom.report import tables

NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)] + ["model.norm.weight"]
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


# ------------------------------------------------------------------------------------ helpers


def _base_weights(dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    out = {n: torch.randn(8, 6, generator=g) for n in NAMES[:3]}
    out["model.norm.weight"] = 1 + 0.1 * torch.randn(6, generator=g)
    return {k: v.to(dtype) for k, v in out.items()}


def _tuned_weights(base):
    g = torch.Generator().manual_seed(1)
    return {
        k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(torch.bfloat16)
        for k, v in base.items()
    }


def _single(folder: Path, tensors) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(folder / "model.safetensors"))
    return folder


def _index(folder: Path, weight_map: dict[str, str]) -> None:
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _sharded(folder: Path, tensors) -> Path:
    """Two shards: NAMES[0:2] in the first, NAMES[2:] in the second, plus the index."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for shard, names in ((SHARD1, NAMES[:2]), (SHARD2, NAMES[2:])):
        save_file({n: tensors[n] for n in names}, str(folder / shard))
        weight_map.update(dict.fromkeys(names, shard))
    _index(folder, weight_map)
    return folder


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    """A good pair: single-file base, two-shard tuned."""
    base = _base_weights()
    return _single(tmp_path / "base", base), _sharded(tmp_path / "tuned", _tuned_weights(base))


def _raw(path: Path, header: bytes, data: bytes = b"", header_len: int | None = None) -> Path:
    """A file laid out as safetensors: 8-byte little-endian length, JSON header, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(header) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def _last_tensor(path: Path) -> str:
    """The tensor whose data ends last in a safetensors file."""
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + n])
    header.pop("__metadata__", None)
    return max(header, key=lambda k: header[k]["data_offsets"][1])


def _run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _diff(capsys, base, tuned, out, *extra) -> tuple[int, str]:
    return _run(capsys, "diff", base, tuned, "--out", out, "--quiet", "--rank", 4, *extra)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _journal_lines(out: Path) -> list[dict]:
    """Complete entries (a line cut by a kill or a full disk is skipped, as the engine does)."""
    path = out / "journal" / "diff.rank0.jsonl"
    entries = []
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _csv_rows(out: Path) -> dict[str, dict]:
    with open(out / "tensors.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """An output folder holding a finished run (copied into each test that needs one)."""
    root = tmp_path_factory.mktemp("finished")
    base, tuned = _pair(root)
    out = root / "out"
    assert main(["diff", str(base), str(tuned), "--out", str(out), "--quiet",
                 "--rank", "4"]) == 0  # fmt: skip
    return out


@pytest.fixture
def earlier(tmp_path, finished) -> Path:
    """An output folder with an earlier run's results, for the 'nothing lost' checks."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def _bad_and_nothing_lost(capsys, base, tuned, out, *must_name) -> str:
    before = _snapshot(out)
    code, err = _diff(capsys, base, tuned, out)
    line = _bad(code, err, *must_name)
    assert _snapshot(out) == before
    return line


# ------------------------------------------------------------------------ corrupt safetensors


def test_truncated_shard_in_sharded_folder(tmp_path, capsys, earlier):
    base, tuned = _pair(tmp_path)
    shard = tuned / SHARD2
    victim = _last_tensor(shard)
    os.truncate(shard, shard.stat().st_size - 5)  # cut the data region short
    line = _bad_and_nothing_lost(capsys, base, tuned, earlier, shard, f"'{victim}'")
    assert "truncated" in line


@pytest.mark.parametrize("how", ["length_prefix", "data_offsets"])
def test_header_claims_more_bytes_than_the_file_has(tmp_path, capsys, earlier, how):
    base, _ = _pair(tmp_path)
    name = "model.norm.weight"
    header = json.dumps({name: {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]}}).encode()
    bad = tmp_path / "bad" / "model.safetensors"
    if how == "length_prefix":  # the 8-byte length says the header runs past the end
        _raw(bad, header, bytes(12), header_len=len(header) + 4096)
        must = (bad,)
    else:  # the header's data_offsets run past the end
        _raw(bad, header, bytes(4))
        must = (bad, f"'{name}'")
    line = _bad_and_nothing_lost(capsys, base, bad.parent, earlier, *must)
    assert "larger than the file" in line or "truncated" in line


@pytest.mark.parametrize(
    "header",
    [b'{"model.norm.weight": {"dtype": "BF16", "shape": [6], ', b"\xff\xfe{}", b"[1, 2, 3]"],
    ids=["cut_json", "not_utf8", "not_an_object"],
)
def test_corrupt_json_header(tmp_path, capsys, earlier, header):
    base, _ = _pair(tmp_path)
    bad = _raw(tmp_path / "bad" / "model.safetensors", header, bytes(12))
    line = _bad_and_nothing_lost(capsys, base, bad, earlier, bad)
    assert "corrupt JSON header" in line


def test_corrupt_index_json(tmp_path, capsys, earlier):
    base, tuned = _pair(tmp_path)
    (tuned / INDEX).write_text('{"metadata": {}, "weight_map": {')
    line = _bad_and_nothing_lost(capsys, base, tuned, earlier, tuned / INDEX)
    assert "corrupt index JSON" in line


# ------------------------------------------------------------------------------- index paths


@pytest.mark.parametrize("how", ["dotdot", "dotdot_backslash", "absolute", "symlink"])
def test_index_shard_path_escaping_the_folder(tmp_path, capsys, earlier, how):
    base, tuned = _pair(tmp_path)
    outside = tmp_path / "outside.safetensors"  # a valid shard, only in the wrong place
    shutil.move(tuned / SHARD2, outside)
    weight_map = json.loads((tuned / INDEX).read_text())["weight_map"]
    if how == "symlink":
        (tuned / SHARD2).symlink_to(outside)
        shard = SHARD2
    else:
        shard = {"dotdot": "../outside.safetensors", "dotdot_backslash": "..\\outside.safetensors",
                 "absolute": str(outside)}[how]  # fmt: skip
    weight_map.update(dict.fromkeys(NAMES[2:], shard))
    _index(tuned, weight_map)
    line = _bad_and_nothing_lost(capsys, base, tuned, earlier, tuned / INDEX)
    assert "escapes the checkpoint folder" in line
    assert any(f"'{n}'" in line for n in NAMES[2:]), line


def test_missing_shard_listed_in_the_index(tmp_path, capsys, earlier):
    base, tuned = _pair(tmp_path)
    (tuned / SHARD2).unlink()
    line = _bad_and_nothing_lost(capsys, base, tuned, earlier, tuned / SHARD2)
    assert "missing" in line
    assert any(f"'{n}'" in line for n in NAMES[2:]), line


# ---------------------------------------------------------------------------- shape and dtype


def test_shape_mismatch_names_the_tensor(tmp_path, capsys, earlier):
    base = _base_weights()
    tuned = _tuned_weights(base)
    tuned[NAMES[1]] = tuned[NAMES[1]].T.contiguous()  # (6, 8) against the base's (8, 6)
    b, t = _single(tmp_path / "base", base), _sharded(tmp_path / "tuned", tuned)
    line = _bad_and_nothing_lost(capsys, b, t, earlier, t / SHARD1, f"'{NAMES[1]}'")
    assert "(6, 8)" in line and "(8, 6)" in line


@pytest.mark.parametrize("int_side", ["base", "tuned"])
def test_float_against_integer_tensor_is_skipped_with_a_note(tmp_path, capsys, int_side):
    """pairing.py: non-float tensors are skipped and listed in the notes; the float partner
    is then unpaired and listed as missing on the integer side (not an error without
    --strict)."""
    base = _base_weights()
    tuned = _tuned_weights(base)
    victim = NAMES[1]
    side = base if int_side == "base" else tuned
    side[victim] = torch.arange(48, dtype=torch.int32).reshape(8, 6)
    b, t = _single(tmp_path / "base", base), _sharded(tmp_path / "tuned", tuned)
    out = tmp_path / "out"
    code, err = _diff(capsys, b, t, out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert f"{int_side}: skipped 1 non-float tensor(s): {victim}" in summary["notes"]
    missing = "missing_in_base" if int_side == "base" else "missing_in_tuned"
    assert summary[missing] == [victim]
    assert victim not in _csv_rows(out)
    assert summary["model"]["n_tensors"] == len(NAMES) - 1


def test_fp16_base_against_bf16_tuned_works(tmp_path, capsys):
    base = _base_weights(torch.float16)
    b = _single(tmp_path / "base", base)
    t = _sharded(tmp_path / "tuned", _tuned_weights(base))
    out = tmp_path / "out"
    code, err = _diff(capsys, b, t, out)
    assert code == 0, err
    rows = _csv_rows(out)
    assert set(rows) == set(NAMES)
    assert {(r["dtype_base"], r["dtype_tuned"]) for r in rows.values()} == {("float16", "bfloat16")}


# ------------------------------------------------------------------- NaN/Inf, empty and 0-d


def test_inf_in_base_and_nan_in_a_norm_are_counted(tmp_path, capsys):
    base = _base_weights()
    tuned = _tuned_weights(base)
    base[NAMES[0]][0, 0], base[NAMES[0]][1, 1] = float("inf"), float("-inf")
    tuned["model.norm.weight"][2] = float("nan")
    b, t = _single(tmp_path / "base", base), _sharded(tmp_path / "tuned", tuned)
    out = tmp_path / "out"
    code, err = _diff(capsys, b, t, out)
    assert code == 0, err
    rows = _csv_rows(out)
    assert int(rows[NAMES[0]]["n_nonfinite"]) == 2
    assert int(rows["model.norm.weight"]["n_nonfinite"]) == 1
    assert int(rows[NAMES[1]]["n_nonfinite"]) == 0
    text = (out / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["model"]["n_nonfinite"] == 3
    assert (
        f"{NAMES[0]}: 2 NaN/Inf values (excluded from the figures; no spectra)" in summary["notes"]
    )
    assert "model.norm.weight: 1 NaN/Inf values (excluded from the figures)" in summary["notes"]
    assert "| non-finite values (excluded) | 3 |" in (out / "report.md").read_text()


def test_empty_and_zero_d_tensors(tmp_path, capsys):
    tensors = {"model.scalar": torch.tensor(1.5), "model.empty": torch.zeros(0, 4),
               NAMES[0]: torch.ones(3, 2)}  # fmt: skip
    b = _single(tmp_path / "base", {k: v.bfloat16() for k, v in tensors.items()})
    t = _single(tmp_path / "tuned", {k: v.bfloat16() for k, v in tensors.items()})
    code, err = _diff(capsys, b, t, tmp_path / "out")
    assert code == 0, err
    rows = _csv_rows(tmp_path / "out")
    assert rows["model.scalar"]["numel"] == "1" and rows["model.empty"]["numel"] == "0"


def test_non_contiguous_tensors_in_a_state_dict(tmp_path, capsys):
    """A torch state dict may hold strided views (transposed, sliced with an offset): the
    figures equal those of the same values stored contiguously, whole or in row blocks."""
    base = _base_weights()
    tuned = _tuned_weights(base)
    views = dict(tuned)
    views[NAMES[0]] = tuned[NAMES[0]].T.contiguous().T
    wide = torch.zeros(8, 13, dtype=torch.bfloat16)
    wide[:, 1::2] = tuned[NAMES[1]]
    views[NAMES[1]] = wide[:, 1::2]
    assert not views[NAMES[0]].is_contiguous() and not views[NAMES[1]].is_contiguous()
    (tmp_path / "views").mkdir()
    torch.save(views, tmp_path / "views" / "pytorch_model.bin")
    b = _single(tmp_path / "base", base)
    t = _single(tmp_path / "tuned", tuned)
    for chunk in ("1GiB", "100"):  # whole tensors, then row blocks
        csvs = []
        for side in (t, tmp_path / "views"):
            out = tmp_path / f"out-{side.name}-{chunk}"
            code, err = _diff(capsys, b, side, out, "--chunk-bytes", chunk)
            assert code == 0, err
            csvs.append((out / "tensors.csv").read_bytes())
        assert csvs[0] == csvs[1], chunk


# --------------------------------------------------------------------------- unreadable input


@pytest.mark.parametrize("which", ["base", "tuned"])
def test_path_that_does_not_exist(tmp_path, capsys, earlier, which):
    base, tuned = _pair(tmp_path)
    nowhere = tmp_path / "no" / "such" / "checkpoint"
    args = (nowhere, tuned) if which == "base" else (base, nowhere)
    line = _bad_and_nothing_lost(capsys, *args, earlier, nowhere)
    assert "no such file" in line


def test_folder_with_no_checkpoint(tmp_path, capsys, earlier):
    base, _ = _pair(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    line = _bad_and_nothing_lost(capsys, base, empty, earlier, empty)
    assert "no checkpoint found" in line


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys, earlier, name):
    base, _ = _pair(tmp_path)
    junk = tmp_path / "junk" / name
    junk.parent.mkdir()
    junk.write_bytes(random.Random(3).randbytes(4096))
    _bad_and_nothing_lost(capsys, base, junk.parent, earlier, junk)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files")
def test_file_without_read_permission(tmp_path, capsys, earlier):
    base, tuned = _pair(tmp_path)
    shard = tuned / SHARD2
    shard.chmod(0)
    try:
        line = _bad_and_nothing_lost(capsys, base, tuned, earlier, shard)
    finally:
        shard.chmod(0o644)
    assert "ermission" in line


def test_out_is_an_existing_file(tmp_path, capsys):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"
    out.write_text("not a folder")
    code, err = _diff(capsys, base, tuned, out)
    _bad(code, err, out)


# ------------------------------------------------------------------------------- out of space


class _FsyncFails:
    """Stands in for ``os`` in the journal module: the ``fail_on``-th fsync fails with ENOSPC;
    with ``cut`` the last journal line is first cut in half (the disk filled mid-write)."""

    def __init__(self, fail_on: int, journal: Path, cut: bool) -> None:
        self.calls, self.fail_on, self.journal, self.cut = 0, fail_on, journal, cut

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls < self.fail_on:
            return os.fsync(fd)
        if self.cut:
            data = self.journal.read_bytes()
            start = data.rstrip(b"\n").rfind(b"\n") + 1
            os.truncate(self.journal, start + (len(data) - start) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _clean_csv(tmp_path, capsys, base, tuned) -> bytes:
    code, err = _diff(capsys, base, tuned, tmp_path / "clean")
    assert code == 0, err
    return (tmp_path / "clean" / "tensors.csv").read_bytes()


@pytest.mark.parametrize("cut", [False, True], ids=["after_write", "mid_line"])
def test_out_of_space_writing_the_journal(tmp_path, capsys, monkeypatch, cut):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"
    journal = out / "journal" / "diff.rank0.jsonl"
    fake = _FsyncFails(2, journal, cut)
    monkeypatch.setattr(journal_module, "os", fake)
    code, err = _diff(capsys, base, tuned, out)
    monkeypatch.undo()
    line = _bad(code, err, journal, f"'{NAMES[1]}'")
    assert "out of space" in line and "rerun" in line
    assert fake.calls == 2
    assert [e["unit"] for e in _journal_lines(out)][:1] == [NAMES[0]]  # the first unit is kept
    assert not (out / "tensors.csv").exists()

    code, err = _diff(capsys, base, tuned, out)
    assert code == 0, err
    assert (out / "tensors.csv").read_bytes() == _clean_csv(tmp_path, capsys, base, tuned)
    assert {e["unit"] for e in _journal_lines(out)} == set(NAMES)
    assert len(_journal_lines(out)) == len(NAMES)  # nothing computed twice


@pytest.mark.parametrize("writer", ["write_table", "write_json"])
def test_out_of_space_writing_the_outputs(tmp_path, capsys, monkeypatch, writer):
    base, tuned = _pair(tmp_path)
    out = tmp_path / "out"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tables, writer, no_space)
    code, err = _diff(capsys, base, tuned, out)
    monkeypatch.undo()
    line = _bad(code, err, out)
    assert "space" in line and "rerun" in line
    computed = _journal_lines(out)
    assert {e["unit"] for e in computed} == set(NAMES)
    assert not (out / "summary.json").exists() and not (out / "report.md").exists()

    code, err = _diff(capsys, base, tuned, out)
    assert code == 0, err
    assert _journal_lines(out) == computed  # outputs written from the journal, no recompute
    for f in ("tensors.csv", "tensors.parquet", "summary.json", "report.md", "report.html"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "tensors.csv").read_bytes() == _clean_csv(tmp_path, capsys, base, tuned)


# ------------------------------------------------------------------------ unreadable mid-run


def test_shard_shrinks_mid_run(tmp_path, capsys, monkeypatch):
    """The second shard is truncated just before its first tensor is read: the error names
    that shard and tensor, the first shard's units stay journaled, and the rerun (file
    restored) computes only the second shard's units."""
    base, tuned = _pair(tmp_path)
    shard = tuned / SHARD2
    good = shard.read_bytes()
    victim = NAMES[2]
    read = reader.Checkpoint.read

    def shrinking_read(self, name, **kwargs):
        if name == victim and Path(self.path) == tuned:
            os.truncate(shard, len(good) - 4)
        return read(self, name, **kwargs)

    monkeypatch.setattr(reader.Checkpoint, "read", shrinking_read)
    out = tmp_path / "out"
    code, err = _diff(capsys, base, tuned, out)
    monkeypatch.undo()
    line = _bad(code, err, shard, f"'{victim}'")
    assert "changed since" in line
    assert [e["unit"] for e in _journal_lines(out)] == NAMES[:2]

    shard.write_bytes(good)
    code, err = _diff(capsys, base, tuned, out)
    assert code == 0, err
    assert [e["unit"] for e in _journal_lines(out)] == NAMES  # NAMES[:2] not recomputed
    assert (out / "tensors.csv").read_bytes() == _clean_csv(tmp_path, capsys, base, tuned)


# ---------------------------------------------------------------------------------- trajectory


def test_trajectory_checkpoints_out_of_training_order(tmp_path, capsys):
    base = _base_weights()
    b = _single(tmp_path / "base", base)
    c20 = _single(tmp_path / "checkpoint-20", _tuned_weights(base))
    c10 = _single(tmp_path / "checkpoint-10", _tuned_weights(base))
    code, err = _run(capsys, "trajectory", b, c20, c10, "--out", tmp_path / "out", "--quiet",
                     "--k", 2)  # fmt: skip
    line = _bad(code, err, c20)
    assert "training order" in line and "[20, 10]" in line
