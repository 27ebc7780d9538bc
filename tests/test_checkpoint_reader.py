"""Checkpoint reader and safetensors header validation: every layout and every bad input.

Each bad input must raise CheckpointError whose one-line message names the file and, where
one is involved, the tensor (DESIGN.md "Reliability contract").
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from contract import expect_error
from safetensors.torch import save_file

from paramgeom.checkpoints.reader import FileIdentity, open_checkpoint
from paramgeom.checkpoints.safetensors_header import (
    MAX_HEADER_BYTES,
    dtype_name,
    read_header,
)

# --------------------------------------------------------------------------- helpers


def write_raw(path, header, data: bytes = b"", header_len: int | None = None) -> None:
    """Hand-craft a safetensors file: 8-byte little-endian length, JSON, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n))
        f.write(raw)
        f.write(data)


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(6, 5, generator=g),
        "b.weight": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(7, generator=g).half(),
        "d.count": torch.arange(5, dtype=torch.int64),
    }


def make_sharded(folder, tensors: dict[str, torch.Tensor], n: int = 3) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for k in range(n):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        part = {name: tensors[name] for name in names[k::n]}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in part})
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def write_index(folder, weight_map: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    flat_a, flat_b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    assert torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))


# --------------------------------------------------------------------------- layouts


def test_single_file(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "weights.safetensors"
    save_file(tensors, str(path))
    with open_checkpoint(path) as ck:
        assert ck.files == [path]
        assert set(ck.tensors) == set(tensors)
        header = read_header(path)
        assert list(ck.tensors) == list(header.entries)  # ordered by offset
        offsets = [s.file_offset for s in header.entries.values()]
        assert offsets == sorted(offsets)
        for name, t in tensors.items():
            info = ck.tensors[name]
            assert (info.dtype, info.shape, info.nbytes) == (t.dtype, tuple(t.shape), t.nbytes)
            assert info.file == path
            out = ck.read(name)
            assert out.is_contiguous() and out.device.type == "cpu"
            assert_same(out, t)
        assert "a.weight" in ck and len(ck) == 4


def test_hf_folder_single_file_and_config(tmp_path):
    save_file(sample_tensors(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with open_checkpoint(tmp_path) as ck:
        assert ck.files == [tmp_path / "model.safetensors"]
        assert ck.config == {"model_type": "llama"}
        assert ck.path == tmp_path


def test_folder_with_one_other_safetensors_file(tmp_path):
    save_file(sample_tensors(), str(tmp_path / "consolidated.safetensors"))
    with open_checkpoint(tmp_path) as ck:
        assert ck.files == [tmp_path / "consolidated.safetensors"]
        assert ck.config is None


def test_folder_with_two_safetensors_and_no_index_is_ambiguous(tmp_path):
    save_file(sample_tensors(), str(tmp_path / "a.safetensors"))
    save_file(sample_tensors(), str(tmp_path / "b.safetensors"))
    with expect_error("ambiguous", tmp_path):
        open_checkpoint(tmp_path)


def test_sharded_folder_with_index(tmp_path):
    tensors = {f"layers.{i}.w": torch.full((2, 3), float(i)) for i in range(7)}
    tensors["lm_head.weight"] = torch.ones(4, 3)
    weight_map = make_sharded(tmp_path, tensors, n=3)
    # a tensor stored in a shard but not listed in the index is ignored, with no error
    extra = dict(
        {n: tensors[n] for n, f in weight_map.items() if f.startswith("model-00002")},
        unlisted=torch.zeros(3),
    )
    save_file(extra, str(tmp_path / "model-00002-of-00003.safetensors"))
    for path in (tmp_path, tmp_path / "model.safetensors.index.json"):
        with open_checkpoint(path) as ck:
            assert [f.name for f in ck.files] == [
                f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)
            ]
            assert set(ck.tensors) == set(tensors)
            assert "unlisted" not in ck.tensors
            # ordered by shard, then by offset within the shard
            shard_of = [ck.files.index(i.file) for i in ck.tensors.values()]
            assert shard_of == sorted(shard_of)
            for name, t in tensors.items():
                assert ck.tensors[name].file.name == weight_map[name]
                assert_same(ck.read(name), t)


def test_index_in_a_subfolder_path_is_allowed(tmp_path):
    (tmp_path / "shards").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "shards" / "part.safetensors"))
    write_index(tmp_path, {"w": "shards/part.safetensors"})
    with open_checkpoint(tmp_path) as ck:
        assert ck.files == [tmp_path / "shards" / "part.safetensors"]


def test_torch_state_dict(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {
        "w": base,
        "wt": base.t(),  # non-contiguous
        "h": torch.randn(5, 2).to(torch.bfloat16),
        "step": 7,
        "note": "ignored",
    }
    path = tmp_path / "ckpt.pt"
    torch.save(sd, path)
    with open_checkpoint(path) as ck:
        assert list(ck.tensors) == ["w", "wt", "h"]
        assert ck.tensors["wt"].shape == (4, 3)
        out = ck.read("wt")
        assert out.is_contiguous() and torch.equal(out, base.t())
        assert torch.equal(ck.read_rows("wt", 1, 3), base.t()[1:3])
        assert_same(ck.read("h"), sd["h"])
        ident = ck.identity(path)
        assert len(ident.header_sha256) == 64


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_torch_state_dict_unwrapped_one_level(tmp_path, key):
    path = tmp_path / "ckpt.pth"
    torch.save({key: {"a": torch.ones(2)}, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with open_checkpoint(path) as ck:
        assert list(ck.tensors) == ["a"]


def test_pytorch_model_bin_folder_and_legacy_format(tmp_path):
    torch.save({"a": torch.ones(2, 2)}, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as ck:
        assert ck.files == [tmp_path / "pytorch_model.bin"]
        assert torch.equal(ck.read("a"), torch.ones(2, 2))
    legacy = tmp_path / "legacy.pt"
    torch.save({"b": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    with open_checkpoint(legacy) as ck:
        assert torch.equal(ck.read("b"), torch.zeros(3))


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_rejected_without_running_it(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.bin"
    if zip_format:
        torch.save({"w": torch.ones(2), "payload": evil}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"w": torch.ones(2), "payload": evil}, f)
    assert not marker.exists()
    with expect_error("weights_only", path):
        open_checkpoint(path)
    assert not marker.exists()


def test_torch_file_bad_contents(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint at all")
    with expect_error("torch state dict", junk):
        open_checkpoint(junk)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with expect_error("no tensors", empty):
        open_checkpoint(empty)
    notdict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], notdict)
    with expect_error("dict of tensors", notdict):
        open_checkpoint(notdict)


def test_nonexistent_unknown_and_empty(tmp_path):
    missing = tmp_path / "nope"
    with expect_error("no such file", missing):
        open_checkpoint(missing)
    txt = tmp_path / "weights.txt"
    txt.write_text("hello")
    with expect_error("unknown checkpoint format", txt):
        open_checkpoint(txt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with expect_error("no checkpoint found", empty):
        open_checkpoint(empty)


def test_unreadable_file(tmp_path, monkeypatch):
    import paramgeom.checkpoints.files as files

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(path))

    class DeniedOS:  # os as the checkpoint files module sees it, with open() refused
        def __getattr__(self, name):
            return getattr(os, name)

        def open(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "os", DeniedOS())  # works when running as root too
    with expect_error("cannot read file: Permission denied", path):
        open_checkpoint(path)


def test_shard_that_is_a_directory(tmp_path):
    (tmp_path / "model-00001-of-00001.safetensors").mkdir()
    write_index(tmp_path, {"w": "model-00001-of-00001.safetensors"})
    with expect_error("not a file", "model-00001-of-00001.safetensors", "w"):
        open_checkpoint(tmp_path)


# --------------------------------------------------------------------------- bad safetensors


def test_truncated_shard(tmp_path):
    tensors = {f"t{i}": torch.randn(8, 8) for i in range(6)}
    make_sharded(tmp_path, tensors, n=2)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    header = read_header(shard)
    last = list(header.entries)[-1]
    os.truncate(shard, shard.stat().st_size - 10)
    with expect_error("truncated file: header claims", shard, last):
        open_checkpoint(tmp_path)


def test_header_claims_more_bytes_than_file_has(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, {"a": entry("F32", [4], 0, 16), "b": entry("F32", [100], 16, 416)}, bytes(16))
    with expect_error(r"header claims \d+ bytes, file has \d+", path, "b"):
        open_checkpoint(path)


def test_corrupt_json_header(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]', bytes(4))
    with expect_error("corrupt JSON header", path):
        open_checkpoint(path)
    write_raw(path, b"\xff\xfe not utf-8", bytes(4))
    with expect_error("corrupt JSON header", path):
        read_header(path)
    write_raw(path, b"[1, 2]")
    with expect_error("corrupt JSON header", path):
        read_header(path)


def test_header_length_larger_than_file(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, {"a": entry("U8", [2], 0, 2)}, b"\x00\x00", header_len=10_000)
    with expect_error("larger than the file", path):
        open_checkpoint(path)
    write_raw(path, b"", header_len=MAX_HEADER_BYTES + 1)
    with expect_error("limit", path):
        read_header(path)
    path.write_bytes(b"\x01\x02")
    with expect_error("too short", path):
        read_header(path)


def test_dtype_shape_vs_byte_length_mismatch(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, {"a": entry("F32", [2, 3], 0, 20)}, bytes(20))
    with expect_error("need 24 bytes", path, "a"):
        open_checkpoint(path)


def test_overlapping_offsets(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}, bytes(24))
    with expect_error("overlap", path, "b"):
        open_checkpoint(path)


def test_gap_and_trailing_bytes(tmp_path):
    path = tmp_path / "x.safetensors"
    write_raw(path, {"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 4, 6)}, bytes(6))
    with expect_error("gap", path, "b"):
        read_header(path)
    write_raw(path, {"a": entry("U8", [2], 0, 2)}, bytes(5))
    with expect_error("unexpected bytes", path):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "match", "tensor"),
    [
        ({"a": entry("Q7", [2], 0, 2)}, "unknown dtype", "a"),
        ({"a": entry("U8", [-2], 0, 2)}, "non-negative", "a"),
        ({"a": entry("U8", [2.0], 0, 2)}, "non-negative", "a"),
        ({"a": {"dtype": "U8", "shape": [2]}}, "lacks data_offsets", "a"),
        ({"a": entry("U8", [2], 2, 0)}, "begin > end", "a"),
        ({"a": [1, 2]}, "not an object", "a"),
        ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0]}}, "data_offsets", "a"),
        ({"__metadata__": {"x": 1}, "a": entry("U8", [2], 0, 2)}, "__metadata__", None),
    ],
)
def test_malformed_entries(tmp_path, header, match, tensor):
    path = tmp_path / "x.safetensors"
    write_raw(path, header, bytes(2))
    names = (path, tensor) if tensor else (path,)
    with expect_error(match, *names):
        read_header(path)


def test_duplicate_tensor_names(tmp_path):
    path = tmp_path / "x.safetensors"
    raw = (
        b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},'
        b' "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    )
    write_raw(path, raw, bytes(2))
    with expect_error("duplicate key", path):
        read_header(path)


def test_header_fields(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(sample_tensors(), str(path), metadata={"format": "pt"})
    h = read_header(path)
    assert h.metadata == {"format": "pt"}
    assert h.file_size == path.stat().st_size
    raw = path.read_bytes()
    assert raw[8 : 8 + h.header_len].decode().strip().startswith("{")
    import hashlib

    assert h.sha256 == hashlib.sha256(raw[8 : 8 + h.header_len]).hexdigest()
    for spec in h.entries.values():
        t = sample_tensors()[spec.name]
        stored = raw[spec.file_offset : spec.file_offset + spec.nbytes]
        assert stored == t.reshape(-1).view(torch.uint8).numpy().tobytes()
        assert dtype_name(spec.dtype) in ("F32", "BF16", "F16", "I64")


# --------------------------------------------------------------------------- bad indexes


def test_index_shard_path_with_dotdot(tmp_path):
    folder = tmp_path / "ck"
    save_file({"w": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    write_index(folder, {"w": "../outside.safetensors"})
    with expect_error(
        "shard path escapes the checkpoint folder", "model.safetensors.index.json", "w"
    ):
        open_checkpoint(folder)
    write_index(folder, {"w": "sub/../../outside.safetensors"})
    with expect_error("shard path escapes the checkpoint folder", "w"):
        open_checkpoint(folder)


def test_index_absolute_shard_path(tmp_path):
    folder = tmp_path / "ck"
    target = tmp_path / "outside.safetensors"
    save_file({"w": torch.ones(2)}, str(target))
    write_index(folder, {"w": str(target)})
    with expect_error("shard path escapes the checkpoint folder", folder, "w"):
        open_checkpoint(folder)
    write_index(folder, {"w": "C:\\weights\\outside.safetensors"})
    with expect_error("shard path escapes the checkpoint folder", folder, "w"):
        open_checkpoint(folder)


def test_index_symlink_shard_pointing_outside(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    target = tmp_path / "outside.safetensors"
    save_file({"w": torch.ones(2)}, str(target))
    (folder / "model-00001-of-00001.safetensors").symlink_to(target)
    write_index(folder, {"w": "model-00001-of-00001.safetensors"})
    with expect_error("shard path escapes the checkpoint folder", folder, "w"):
        open_checkpoint(folder)


def test_index_symlink_inside_folder_and_hf_cache_layout_are_fine(tmp_path):
    folder = tmp_path / "ck"
    (folder / "real").mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(folder / "real" / "data.safetensors"))
    (folder / "model-00001-of-00001.safetensors").symlink_to(folder / "real" / "data.safetensors")
    write_index(folder, {"w": "model-00001-of-00001.safetensors"})
    with open_checkpoint(folder) as ck:
        assert torch.equal(ck.read("w"), torch.ones(2))
    # Hugging Face cache: snapshots/<rev>/file -> ../../blobs/<hash>
    repo = tmp_path / "hub" / "models--org--tiny"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    save_file({"w": torch.ones(3)}, str(repo / "blobs" / "deadbeef"))
    (snap / "model-00001-of-00001.safetensors").symlink_to("../../blobs/deadbeef")
    write_index(snap, {"w": "model-00001-of-00001.safetensors"})
    with open_checkpoint(snap) as ck:
        assert torch.equal(ck.read("w"), torch.ones(3))


def test_index_missing_shard(tmp_path):
    tensors = {"a": torch.ones(2), "b": torch.zeros(2)}
    save_file({"a": tensors["a"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    write_index(
        tmp_path,
        {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    )
    with expect_error("missing", "model-00002-of-00002.safetensors", "b"):
        open_checkpoint(tmp_path)


def test_index_tensor_absent_from_its_shard(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    write_index(
        tmp_path,
        {"a": "model-00001-of-00001.safetensors", "ghost": "model-00001-of-00001.safetensors"},
    )
    with expect_error("not in this shard", "model-00001-of-00001.safetensors", "ghost"):
        open_checkpoint(tmp_path)


def test_index_corrupt_json_and_bad_weight_map(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": ')
    with expect_error("corrupt index JSON", index):
        open_checkpoint(tmp_path)
    index.write_text(json.dumps({"metadata": {}}))
    with expect_error("weight_map", index):
        open_checkpoint(tmp_path)
    index.write_text(json.dumps({"weight_map": {"a": 3}}))
    with expect_error("bad shard path", index, "a"):
        open_checkpoint(tmp_path)


# --------------------------------------------------------------------------- reading


def test_empty_and_zero_d_tensors(tmp_path):
    tensors = {
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "empty1d": torch.zeros(0, dtype=torch.bfloat16),
        "v": torch.arange(3.0),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    pt = tmp_path / "x.pt"
    torch.save(tensors, pt)
    for p in (path, pt):
        with open_checkpoint(p) as ck:
            assert ck.tensors["scalar"].shape == ()
            assert ck.tensors["empty"].nbytes == 0
            for name, t in tensors.items():
                assert_same(ck.read(name), t)
            assert ck.read_rows("empty", 0, 0).shape == (0, 4)
            assert ck.read_rows("v", 3, 3).shape == (0,)
            with pytest.raises(ValueError, match="0-d"):
                ck.read_rows("scalar", 0, 1)


def test_bf16_and_fp8_round_trip_bit_exact(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(33, 17, generator=g) * 10
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    tensors = {
        "bf": x.to(torch.bfloat16),
        "e4m3": x.to(torch.float8_e4m3fn),
        "e5m2": x.to(torch.float8_e5m2),
        "f16": x.half(),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    pt = tmp_path / "x.pt"
    torch.save(tensors, pt)
    for p in (path, pt):
        with open_checkpoint(p) as ck:
            for name, t in tensors.items():
                out = ck.read(name)
                assert out.dtype == t.dtype
                view = torch.int16 if t.element_size() == 2 else torch.uint8
                assert torch.equal(out.view(view), t.view(view))
                rows = ck.read_rows(name, 5, 20)
                assert torch.equal(rows.view(view), t[5:20].view(view))


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_read_rows_equals_read_slice(tmp_path, kind):
    g = torch.Generator().manual_seed(4)
    tensors = {
        "m": torch.randn(37, 9, generator=g),
        "v": torch.randn(11, generator=g).to(torch.bfloat16),
        "s": torch.randn(4, 3, 5, generator=g),
    }
    path = tmp_path / ("x.safetensors" if kind == "safetensors" else "x.pt")
    if kind == "safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    with open_checkpoint(path) as ck:
        for name, t in tensors.items():
            full = ck.read(name)
            n = t.shape[0]
            for start, stop in [(0, n), (0, 1), (3, min(7, n)), (n - 1, n), (2, 2)]:
                rows = ck.read_rows(name, start, stop)
                assert rows.is_contiguous()
                assert_same(rows, full[start:stop])
            for bad in [(-1, 2), (3, 2), (0, n + 1)]:
                with pytest.raises(ValueError, match="out of range"):
                    ck.read_rows(name, *bad)
        with pytest.raises(KeyError):
            ck.read("nope")


def test_reads_are_private_copies(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(4, 4)}, str(path))
    with open_checkpoint(path) as ck:
        a = ck.read("w")
        a.add_(1.0)
        assert torch.equal(ck.read("w"), torch.ones(4, 4))
        view = ck.read("w", copy=False)
        assert torch.equal(view, torch.ones(4, 4))


def test_identity_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(4)}, str(path))
    with open_checkpoint(tmp_path) as ck:
        first = ck.identity(path)
    assert isinstance(first, FileIdentity)
    assert first.path == str(path.resolve()) and os.path.isabs(first.path)
    assert first.size == path.stat().st_size
    with open_checkpoint(tmp_path) as ck:
        assert ck.identity(path) == first and ck.identity(path).key() == first.key()

    # same size, same header, different mtime
    os.utime(path, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    with open_checkpoint(tmp_path) as ck:
        touched = ck.identity(path)
    assert touched.mtime_ns != first.mtime_ns and touched.header_sha256 == first.header_sha256
    assert touched.key() != first.key()

    # same size, different header (tensor renamed), mtime forced back
    save_file({"v": torch.ones(4)}, str(path))
    os.utime(path, ns=(first.mtime_ns, first.mtime_ns))
    with open_checkpoint(tmp_path) as ck:
        renamed = ck.identity(path)
    assert renamed.size == first.size and renamed.mtime_ns == first.mtime_ns
    assert renamed.header_sha256 != first.header_sha256 and renamed.key() != first.key()

    # different size
    save_file({"v": torch.ones(8)}, str(path))
    with open_checkpoint(tmp_path) as ck:
        assert ck.identity(path).size != first.size

    # torch state dicts: sha256 of the whole file
    pt = tmp_path / "x.pt"
    torch.save({"w": torch.ones(4)}, pt)
    with open_checkpoint(pt) as ck:
        a = ck.identity(pt)
    torch.save({"w": torch.full((4,), 2.0)}, pt)
    os.utime(pt, ns=(a.mtime_ns, a.mtime_ns))
    with open_checkpoint(pt) as ck:
        b = ck.identity(pt)
    assert a.header_sha256 != b.header_sha256


@pytest.mark.parametrize("touch_first", [False, True])
def test_file_shrunk_after_open_is_an_error_not_a_crash(tmp_path, touch_first):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.randn(64, 64), "b": torch.randn(64, 64)}, str(path))
    ck = open_checkpoint(path)
    if touch_first:
        ck.read("a")  # the mmap handle is open now
    os.truncate(path, 4096)
    with expect_error("changed since", path, "b"):
        ck.read("b")
    with expect_error("changed since", path, "b"):
        ck.read_rows("b", 0, 2)
    with expect_error("changed since", path):
        ck.identity(path)
    ck.close()


def test_os_error_while_reading_names_file_and_tensor(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    with open_checkpoint(path) as ck:
        src = ck._source("a")

        def boom(*args, **kwargs):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(src, "get", boom)
        monkeypatch.setattr(src, "get_rows", boom)
        with expect_error("Input/output error", path, "a"):
            ck.read("a")
        with expect_error("read failed", path, "a"):
            ck.read_rows("a", 0, 1)


def test_close_and_context_manager(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    ck = open_checkpoint(path)
    ck.read("a")
    ck.close()
    with pytest.raises(ValueError, match="closed"):
        ck.read("a")
    ck.close()  # idempotent
    with open_checkpoint(path) as ck2:
        assert "Checkpoint(" in repr(ck2)


@pytest.mark.parametrize("reader", ["map", "pread"])
def test_our_readers_equal_safe_open(tmp_path, reader):
    """Per-tensor mappings, positioned reads and safetensors' safe_open read the same
    validated byte ranges: whole tensors and row blocks bit-identical, every dtype."""
    tensors = {
        "a.bf16": torch.randn(7, 5).to(torch.bfloat16),
        "b.f32": torch.randn(3, 4, 2),
        "c.fp8": torch.randn(6, 8).to(torch.float8_e4m3fn),
        "d.scalar": torch.tensor(2.5, dtype=torch.float16),
        "e.empty": torch.zeros(0, 3),
        "f.i64": torch.arange(5),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with (
        open_checkpoint(tmp_path, reader=reader) as p,
        open_checkpoint(tmp_path, reader="safe_open") as m,
    ):
        for name, want in tensors.items():
            a, b = p.read(name, copy=False), m.read(name)
            assert torch.equal(
                p.read(name).view(-1).view(torch.uint8), a.view(-1).view(torch.uint8)
            )
            assert a.dtype == b.dtype == want.dtype and a.shape == b.shape == want.shape
            raw = want.reshape(-1).view(torch.uint8).tolist()
            assert a.reshape(-1).view(torch.uint8).tolist() == raw
            assert b.reshape(-1).view(torch.uint8).tolist() == raw
            if want.dim() and want.shape[0] > 1:
                r = p.read_rows(name, 1, want.shape[0], copy=False)
                assert torch.equal(r.view(torch.uint8), want[1:].contiguous().view(torch.uint8))
    with pytest.raises(ValueError, match="reader must be"):
        open_checkpoint(tmp_path, reader="fast")


def test_zero_copy_map_is_copy_on_write(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(1024, 16)}, str(path))
    before = path.read_bytes()
    with open_checkpoint(tmp_path, reader="map") as ck:
        view = ck.read("w", copy=False)
        view.add_(1.0)  # a private page copy: never the file, never a crash
        assert torch.equal(ck.read("w", copy=False), torch.ones(1024, 16))
    assert path.read_bytes() == before
