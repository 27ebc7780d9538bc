"""torch.distributed.checkpoint folders, written by the real library: FSDP2 (``fully_shard``)
on two gloo CPU ranks with an AdamW step, plus column-sharded, replicated, bf16 and
block-scaled fp8 DTensors, saved with ``dcp.save`` (model and optimizer state, as
torchtitan-style trainers do). Each tensor read back equals the full tensor the ranks
gathered (``full_tensor()``) bit for bit; row blocks cross chunk boundaries; ``paramgeom
diff`` of a safetensors base against the DCP folder gives the figures of the same diff
against a safetensors copy, with the optimizer keys skipped and listed. Hostile metadata
(code in the pickle, paths out of the folder, chunks out of their file, gaps and overlaps)
and damaged data files give one line naming the file (and the key), exit 2, and run no code.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from gloo import gathered, run_ranks
from safetensors.torch import save_file

from paramgeom.checkpoints import dcp as dcp_format
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.reader import open_checkpoint

WRITER = textwrap.dedent(
    """
    import sys, warnings
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    warnings.simplefilter("ignore")

    def run(rank, world, store, out):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict, get_optimizer_state_dict)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        # Odd sizes: uneven shards (33 rows over 2 ranks are 17 + 16).
        model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(),
                                    torch.nn.Linear(33, 7))
        for m in model:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        sd = dict(get_model_state_dict(model))
        g = torch.Generator().manual_seed(1)
        extra = {
            "cols.weight": (torch.randn(5, 9, generator=g), [Shard(1)]),
            "rep.weight": (torch.randn(4, 4, generator=g), [Replicate()]),
            "bf.weight": (torch.randn(11, 6, generator=g).bfloat16(), [Shard(0)]),
            "fp8.weight": ((torch.randn(130, 20, generator=g) * 50).to(torch.float8_e4m3fn),
                           [Shard(0)]),
            "fp8.weight_scale_inv": (torch.rand(2, 1, generator=g) + 0.5, [Replicate()]),
        }
        full = {k: v.full_tensor().contiguous() for k, v in sd.items()}
        for name, (t, placements) in extra.items():
            full[name] = t
            if t.dtype == torch.float8_e4m3fn:  # gloo cannot scatter fp8: shard by hand
                local = t.chunk(world, dim=0)[rank].contiguous()
                sd[name] = DTensor.from_local(local, mesh, placements, run_check=False,
                                              shape=t.shape, stride=t.stride())
            else:
                sd[name] = distribute_tensor(t, mesh, placements)
        dcp.save({"model": sd, "optimizer": get_optimizer_state_dict(model, opt),
                  "train_state": {"step": 1}}, checkpoint_id=out + "/ck")
        if rank == 0:
            torch.save(full, out + "/full.pt")
        dist.barrier()  # both ranks done before gloo tears down
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
    """
)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A DCP folder written by two gloo ranks (``ck/``) and the full tensors (``full.pt``)."""
    root = tmp_path_factory.mktemp("dcp")
    run_ranks(WRITER, root, str(root), writer=True)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ck"
    shutil.copytree(root / "ck", dst)
    return dst


def test_every_tensor_equals_the_gathered_tensor(written):
    full = gathered(written)
    with open_checkpoint(written / "ck") as ckpt:
        assert set(ckpt.tensors) == {f"model.{k}" for k in full}
        for name, info in ckpt.tensors.items():
            want = full[name.removeprefix("model.")]
            got = ckpt.read(name)
            assert (got.dtype, tuple(got.shape)) == (want.dtype, tuple(want.shape)), name
            assert (info.dtype, info.shape) == (want.dtype, tuple(want.shape))
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
        # Uneven FSDP2 shards: 17 + 16 rows, in the two ranks' files.
        chunks = ckpt._by_name["model.0.weight"].layout.tensors["model.0.weight"].chunks
        assert [(c.offsets, c.sizes, c.file.name) for c in chunks] == [
            ((0, 0), (17, 16), "__0_0.distcp"),
            ((17, 0), (16, 16), "__1_0.distcp"),
        ]


@pytest.mark.parametrize(
    "name,start,stop",
    [("model.0.weight", 10, 20), ("model.0.weight", 17, 18), ("model.0.weight", 0, 33),
     ("model.cols.weight", 1, 4), ("model.fp8.weight", 60, 130), ("model.0.bias", 16, 18),
     ("model.2.weight", 3, 3)],
)  # fmt: skip
def test_row_blocks_across_chunks(written, name, start, stop):
    want = gathered(written)[name.removeprefix("model.")][start:stop]
    with open_checkpoint(written / "ck") as ckpt:
        got = ckpt.read_rows(name, start, stop)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_optimizer_and_non_tensor_keys_are_skipped_and_listed(written):
    with open_checkpoint(written / "ck") as ckpt:
        skipped = ckpt.skipped
    assert skipped["optimizer.state.0.weight.exp_avg"] == "not a model weight (optimizer state)"
    assert skipped["train_state.step"] == "not a tensor (saved as bytes)"
    assert not any(k.startswith("model.") for k in skipped)


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "tensors.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_diff_against_a_safetensors_base_matches_a_safetensors_copy(written, tmp_path):
    """An HF-style safetensors base against the DCP folder (names pair after ``model.``
    is removed): the figures of the same diff against a safetensors copy of the DCP
    tensors, and the notes list what was skipped."""
    full = gathered(written)
    g = torch.Generator().manual_seed(5)
    base = {
        k: (v if k.startswith("fp8") else v + (torch.rand(v.shape, generator=g) < 0.5) * 1e-2)
        .to(v.dtype)
        .contiguous()
        for k, v in full.items()
    }
    (tmp_path / "base").mkdir()
    save_file(base, tmp_path / "base" / "model.safetensors")
    (tmp_path / "copy").mkdir()
    save_file(full, tmp_path / "copy" / "model.safetensors")
    outs = {}
    for label, tuned in (("dcp", written / "ck"), ("copy", tmp_path / "copy")):
        out = tmp_path / f"out_{label}"
        proc = subprocess.run(
            [sys.executable, "-m", "paramgeom.cli", "diff", str(tmp_path / "base"), str(tuned),
             "--out", str(out), "--no-spectra", "--quiet"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outs[label] = out
    dcp_rows, copy_rows = _rows(outs["dcp"]), _rows(outs["copy"])
    assert len(dcp_rows) == len(copy_rows) >= 7
    for name, row in copy_rows.items():
        other = dcp_rows["model." + name]
        for col in ("unchanged_fraction", "unchanged_fraction_atol", "frobenius_delta", "numel"):
            assert other[col] == row[col], (name, col)
    text = json.dumps(json.loads((outs["dcp"] / "summary.json").read_text()))
    assert "optimizer state" in text and "optimizer.state.0.weight.exp_avg" in text


# ---------------------------------------------------------------- hostile inputs


def _metadata(ck: Path):
    """The real metadata objects (test code unpickles its own trusted file)."""
    with open(ck / ".metadata", "rb") as f:
        return pickle.load(f)


def _write_metadata(ck: Path, md) -> None:
    with open(ck / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _expect_one_line(path: Path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info, open_checkpoint(path) as ckpt:
        for name in ckpt.tensors:
            ckpt.read(name)
    message = str(info.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_code_in_the_metadata_pickle_never_runs(written, tmp_path):
    ck = _copy(written, tmp_path)
    marker = tmp_path / "ran"
    md = _metadata(ck)
    md.planner_data = {"x": _RunsCode(str(marker))}
    _write_metadata(ck, md)
    _expect_one_line(ck, ".metadata", "global posix.system is not part of DCP metadata")
    assert not marker.exists()
    # The command line: exit 2, one line on stderr naming the file, and still no code run.
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "diff", str(ck), str(ck), "--out",
         str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ".metadata" in lines[0] and "posix.system" in lines[0], lines
    assert not marker.exists()


def _edit_storage(md, key: str, **changes):
    from dataclasses import replace

    for index, info in list(md.storage_data.items()):
        if index.fqn == key:
            md.storage_data[index] = replace(info, **changes)
            return md
    raise AssertionError(key)


def _edit_chunks(md, key: str, chunks):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    md.state_dict_metadata[key].chunks = [
        ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in chunks
    ]
    return md


HOSTILE_METADATA = {
    "path out of the folder": (
        lambda md: _edit_storage(md, "model.0.weight", relative_path="../full.pt"),
        ("model.0.weight", "not a file name inside the folder"),
    ),
    "absolute path": (
        lambda md: _edit_storage(md, "model.0.weight", relative_path="/etc/passwd"),
        ("not a file name inside the folder",),
    ),
    "missing data file": (
        lambda md: _edit_storage(md, "model.0.weight", relative_path="__9_0.distcp"),
        ("__9_0.distcp", "DCP data file is missing"),
    ),
    "chunk past the end of its file": (
        lambda md: _edit_storage(md, "model.2.bias", offset=10**9),
        ("model.2.bias", "truncated?"),
    ),
    "negative length": (
        lambda md: _edit_storage(md, "model.2.bias", length=-1),
        ("model.2.bias", "bad byte range"),
    ),
    "gap between chunks": (
        lambda md: _edit_chunks(md, "model.0.weight", [((0, 0), (17, 16)), ((18, 0), (15, 16))]),
        ("model.0.weight", "do not cover it exactly"),
    ),
    "overlapping chunks": (  # the sizes add up: an overlap at row 16, a hole at row 32
        lambda md: _edit_chunks(md, "model.0.weight", [((0, 0), (17, 16)), ((16, 0), (16, 16))]),
        ("model.0.weight", "overlap"),
    ),
    "chunk outside the tensor": (
        lambda md: _edit_chunks(md, "model.0.weight", [((0, 0), (17, 16)), ((17, 0), (17, 16))]),
        ("model.0.weight", "lies outside"),
    ),
    "chunk without storage": (
        lambda md: _edit_chunks(md, "model.0.weight", [((0, 0), (16, 16)), ((16, 0), (17, 16))]),
        ("model.0.weight", "has no storage entry"),
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_lying_metadata_is_one_line(written, tmp_path, case):
    ck = _copy(written, tmp_path)
    edit, words = HOSTILE_METADATA[case]
    _write_metadata(ck, edit(_metadata(ck)))
    _expect_one_line(ck, *words)


@pytest.mark.parametrize("keep", [0, 10, 400])
def test_truncated_metadata(written, tmp_path, keep):
    ck = _copy(written, tmp_path)
    raw = (ck / ".metadata").read_bytes()
    (ck / ".metadata").write_bytes(raw[:keep])
    _expect_one_line(ck, ".metadata")


def test_truncated_data_file_is_refused_at_open(written, tmp_path):
    ck = _copy(written, tmp_path)
    data = ck / "__1_0.distcp"
    data.write_bytes(data.read_bytes()[:1000])
    _expect_one_line(ck, "__1_0.distcp", "truncated?")


def test_damaged_chunk_archive_names_file_and_tensor(written, tmp_path):
    ck = _copy(written, tmp_path)
    md = _metadata(ck)
    info = next(v for k, v in md.storage_data.items() if k.fqn == "model.2.weight")
    path = ck / info.relative_path
    raw = bytearray(path.read_bytes())
    raw[info.offset : info.offset + 64] = b"\xff" * 64  # the chunk's first zip header
    path.write_bytes(bytes(raw))
    _expect_one_line(ck, info.relative_path, "model.2.weight", "chunk at")


def test_a_chunk_of_the_wrong_shape_is_refused(written, tmp_path):
    """Two chunks' storage entries swapped: each archive holds the other's shape."""
    ck = _copy(written, tmp_path)
    md = _metadata(ck)
    items = [(k, v) for k, v in md.storage_data.items() if k.fqn == "model.0.weight"]
    (k0, v0), (k1, v1) = items
    md.storage_data[k0], md.storage_data[k1] = v1, v0
    _write_metadata(ck, md)
    _expect_one_line(ck, "model.0.weight", "the metadata says")


def test_a_data_file_changed_after_open_is_refused(written, tmp_path):
    ck = _copy(written, tmp_path)
    with open_checkpoint(ck) as ckpt:
        ckpt.read("model.0.weight")
        data = ck / "__0_0.distcp"
        data.write_bytes(data.read_bytes() + b"\0")
        with pytest.raises(CheckpointError, match="file changed since the checkpoint was opened"):
            ckpt.read("model.0.weight")


def test_tiling_rule():
    tiles = dcp_format.tiles_exactly
    assert tiles((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))]) is None
    assert tiles((4, 4), [((0, 0), (4, 2)), ((0, 2), (4, 2))]) is None
    assert tiles((4, 4), [((0, 0), (2, 2)), ((0, 2), (2, 2)), ((2, 0), (2, 4))]) is None
    assert "do not cover" in tiles((4, 4), [((0, 0), (3, 3)), ((1, 1), (3, 3))])
    # Equal volume, but two boxes overlap and leave a hole.
    assert "overlap" in tiles((2, 2), [((0, 0), (1, 2)), ((0, 0), (1, 2))])
    assert tiles((), [((), ())]) is None
    assert tiles((0, 3), []) is None
