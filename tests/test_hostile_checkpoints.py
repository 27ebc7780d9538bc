"""``paramgeom diff`` on hostile checkpoint files (DESIGN.md "Reliability contract").

A hypothesis property test mutates a small valid two-shard tuned checkpoint (header bytes,
the 8-byte header length, the header JSON edited structurally, the data region, the index,
config.json, shards or index replaced by FIFOs, devices or symlinks) and checks the contract
for every result: ``main()`` returns 0 or 2 and never raises or hangs; on 2, stderr is one
line ``paramgeom diff: error: ...`` naming the mutated file or folder (and the tensor, for a
dtype or shape edit); on 0, the input was one a correct reader accepts (safetensors.torch's
``load_file`` reads it, no duplicate keys, shapes match) and every figure of
``tensors.csv`` equals a float64 oracle computed from the tensors as ``load_file`` reads
the mutated files. A file whose data bytes alone changed must give exit 0.

The plain tests after it pin each distinct failure the property test found. At 3e82ee7:
a header (or config.json) of nested brackets raised RecursionError; a duplicate weight_map
key was accepted; a zero-size tensor with a dimension >= 2^63 was accepted; a FIFO given as
TUNED hung in open(). Those pass since fab9579 / 01ecda2. Still open: a symlink loop in a
shard path (RuntimeError), a shard name too long for the file system (OSError), a tensor
name with a lone surrogate (accepted at open; the error line at report writing names no
file).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from oracle import diff_stats_oracle, round_bf16, to_f64
from safetensors.torch import load_file, save_file

from paramgeom.checkpoints.naming import pairing_key
from paramgeom.cli import main

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX (FIFOs, alarm)")

REL_TOL, ATOL = 1e-3, 1e-5  # the diff command's defaults
HANG_S = 20.0
"""A ``main()`` call running longer than this is a hang (the FIFOs are unblocked then)."""

UP = "model.layers.0.mlp.up_proj.weight"
Q = "model.layers.0.self_attn.q_proj.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
NORM = "model.norm.weight"
SCALE = "model.scale"
SHARDS = {1: "model-00001-of-00002.safetensors", 2: "model-00002-of-00002.safetensors"}
IN_SHARD = {1: (UP, Q), 2: (DOWN, NORM, SCALE)}
INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {torch.float64, torch.float32, torch.bfloat16, torch.float16,
                torch.float8_e4m3fn, torch.float8_e5m2}  # fmt: skip


def _weights() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Base and tuned: bf16 and fp32 matrices (UP and Q have the same byte size, so swapping
    their data_offsets keeps the file valid), a bf16 vector and an fp32 0-d tensor."""
    g = torch.Generator().manual_seed(0)
    shapes = {UP: ((8, 6), torch.bfloat16), Q: ((4, 6), torch.float32),
              DOWN: ((5, 8), torch.bfloat16), NORM: ((6,), torch.bfloat16),
              SCALE: ((), torch.float32)}  # fmt: skip
    base = {n: torch.randn(s, generator=g).to(dt) for n, (s, dt) in shapes.items()}
    tuned = {n: (w.float() + 0.01 * torch.randn(w.shape, generator=g)).to(w.dtype)
             for n, w in base.items()}  # fmt: skip
    return base, tuned


BASE, TUNED = _weights()


def _pristine() -> dict[str, bytes]:
    """File name -> bytes of the valid tuned folder (two shards and the index)."""
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, names in IN_SHARD.items():
            save_file({n: TUNED[n] for n in names}, os.path.join(tmp, SHARDS[i]))
            files[SHARDS[i]] = Path(tmp, SHARDS[i]).read_bytes()
    weight_map = {n: SHARDS[i] for i, names in IN_SHARD.items() for n in names}
    files[INDEX] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


PRISTINE = _pristine()


# ------------------------------------------------------------------------------ file helpers


def _split(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(header length, header bytes, the rest) of a safetensors file; None when unparsable."""
    if len(data) < 8:
        return None
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        return None
    return n, data[8 : 8 + n], data[8 + n :]


def _join(header: bytes, rest: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + rest


def _plain(path: Path) -> bool:
    """A regular file, not a symlink: what a mutation may read and edit (a FIFO would block
    the read, a symlink to /dev/zero never end it)."""
    return path.is_file() and not path.is_symlink()


def _absent_or_plain(path: Path) -> bool:
    return _plain(path) or not (path.exists() or path.is_symlink())


def _header_obj(path: Path) -> tuple[dict, bytes] | None:
    """The header as a dict (and the data region), or None when it is not a JSON object."""
    if not _plain(path):
        return None
    parts = _split(path.read_bytes())
    if parts is None:
        return None
    try:
        obj = json.loads(parts[1])
    except (ValueError, RecursionError):
        return None
    return (obj, parts[2]) if isinstance(obj, dict) else None


def _rewrite(path: Path, text: str, rest: bytes) -> None:
    path.write_bytes(_join(text.encode(), rest))


def _dump(obj: object) -> str:
    return json.dumps(obj, allow_nan=False)  # ASCII: a lone surrogate becomes an escape


def _pairs_text(pairs: list[tuple[str, object]]) -> str:
    """A JSON object written by hand from (key, value) pairs (duplicate keys allowed)."""
    return "{" + ", ".join(f"{_dump(k)}: {_dump(v)}" for k, v in pairs) + "}"


# ---------------------------------------------------------------------------------- mutations
# Each mutation is a small frozen dataclass (so a shrunk failing example reads as what was
# done) with apply(root): it edits the tuned folder at ``root`` in place. A mutation whose
# precondition no longer holds (an earlier one broke the header) does nothing.


@dataclass(frozen=True)
class HeaderBytes:
    """Flip / replace / insert / delete one byte of the JSON header."""

    shard: int
    op: str
    at: int
    byte: int
    fix_length: bool = False  # insert/delete: also update the 8-byte length

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        parts = _split(path.read_bytes()) if _plain(path) else None
        if parts is None or not parts[1]:
            return
        n, h, rest = parts
        i = self.at % len(h)
        if self.op == "flip":
            h = h[:i] + bytes([h[i] ^ (self.byte or 1)]) + h[i + 1 :]
        elif self.op == "replace":
            h = h[:i] + bytes([self.byte]) + h[i + 1 :]
        elif self.op == "insert":
            h = h[:i] + bytes([self.byte]) + h[i:]
        else:
            h = h[:i] + h[i + 1 :]
        # Without fix_length the old length now ends the header a byte late / early.
        length = len(h) if self.op in ("flip", "replace") or self.fix_length else n
        path.write_bytes(_join(h, rest, length))


HEADER_LENGTHS = ("0", "7", "-1", "+1", "-8", "+8", "file", "file+1", "2**32", "100000001",
                  "2**63", "2**64-1")  # fmt: skip
_FIXED_LENGTHS = {"0": 0, "7": 7, "2**32": 2**32, "100000001": 100_000_001, "2**63": 2**63,
                  "2**64-1": 2**64 - 1}  # fmt: skip


@dataclass(frozen=True)
class HeaderLength:
    """Replace the 8-byte header length."""

    shard: int
    to: str

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        data = path.read_bytes() if _plain(path) else b""
        if len(data) < 8:
            return
        n = struct.unpack("<Q", data[:8])[0]
        size = len(data) - 8
        value = {"-1": n - 1, "+1": n + 1, "-8": n - 8, "+8": n + 8, "file": size,
                 "file+1": size + 1}.get(self.to)  # fmt: skip
        value = _FIXED_LENGTHS[self.to] if value is None else value
        path.write_bytes(struct.pack("<Q", value % 2**64) + data[8:])


DTYPES = ("BF16", "F16", "F32", "F64", "I32", "U32", "I16", "U16", "BOOL", "U8", "F8_E4M3",
          "F8_E5M2", "F8_E4M3FNUZ", "C64", "I64", "U64", "bf16", "float32", "", "BF16 ",
          "F32\u0000", "F4", "Q4_0", None, 16, 2.5, True, [], {})  # fmt: skip
SHAPES = ([9223372036854775808, 0], [0, 2**64], [2**63], [2**64], [2**64 - 1, 0], [-1],
          [-1, -48], [8.0, 6.0], [48.0], ["8", 6], "8x6", None, [[8], 6], [[]], [True, 48],
          [8, 6, 1], [1, 8, 6], [6, 8], [48], [24, 2, 1], [], [1], [0], [2**31, 2**31, 0],
          [4, 6], [2, 3])  # fmt: skip
OFFSETS = ("reverse", "begin+1", "end+1", "end-1", "past_eof", "negative", "float", "string",
           "short", "long", "null", "2**63", "2**64", "zero", "swap", "copy_other")  # fmt: skip


@dataclass(frozen=True)
class SetField:
    """Set a tensor entry's dtype / shape, or edit its data_offsets, re-serialising the JSON
    (the header length follows the new text; the data region is kept)."""

    shard: int
    tensor: str
    field: str
    value: object

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None or not isinstance(got[0].get(self.tensor), dict):
            return
        obj, rest = got
        entry = obj[self.tensor]
        if self.field != "data_offsets":
            entry[self.field] = self.value
        else:
            offs = entry.get("data_offsets")
            if not (
                isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
            ):
                return  # fmt: skip
            b, e = offs
            others = [k for k, v in obj.items() if k != self.tensor and isinstance(v, dict)
                      and isinstance(v.get("data_offsets"), list)]  # fmt: skip
            if self.value in ("swap", "copy_other"):
                if not others:
                    return
                other = obj[others[0]]
                entry["data_offsets"] = other["data_offsets"]
                if self.value == "swap":
                    other["data_offsets"] = [b, e]
            else:
                entry["data_offsets"] = {
                    "reverse": [e, b], "begin+1": [b + 1, e], "end+1": [b, e + 1],
                    "end-1": [b, e - 1], "past_eof": [b + 10**6, e + 10**6], "negative": [-1, e],
                    "float": [float(b), float(e)], "string": [str(b), str(e)], "short": [b],
                    "long": [b, e, e], "null": None, "2**63": [b, 2**63], "2**64": [2**64, 2**64],
                    "zero": [0, 0],
                }[self.value]  # fmt: skip
        _rewrite(path, _dump(obj), rest)


@dataclass(frozen=True)
class DuplicateKey:
    """Repeat a key of the header (a tensor or ``__metadata__``), with the same value or with
    another tensor's value (JSON written by hand)."""

    shard: int
    key: str
    same: bool

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None:
            return
        obj, rest = got
        pairs = list(obj.items())
        if self.key == "__metadata__":
            pairs = [("__metadata__", {"format": "pt"}), *pairs, ("__metadata__", {})]
        elif self.key in obj:
            other = next((v for k, v in pairs if k != self.key and k != "__metadata__"), None)
            pairs.append((self.key, obj[self.key] if self.same or other is None else other))
        _rewrite(path, _pairs_text(pairs), rest)


@dataclass(frozen=True)
class Nested:
    """``depth`` levels of nested brackets: as the whole header, as a tensor's shape or as
    the ``__metadata__`` value."""

    shard: int
    where: str
    depth: int

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None:
            return
        obj, rest = got
        deep = "[" * self.depth + "]" * self.depth
        if self.where == "header":
            text = deep
        else:
            key = "__metadata__" if self.where == "metadata" else IN_SHARD[self.shard][0]
            pairs = [(k, v) for k, v in obj.items() if k != key]
            if self.where == "shape" and isinstance(obj.get(key), dict):
                entry = {k: v for k, v in obj[key].items() if k != "shape"}
                body = _dump(entry)[:-1] + (", " if entry else "") + f'"shape": {deep}}}'
            else:
                body = deep
            text = _pairs_text(pairs)[:-1] + (", " if pairs else "") + f"{_dump(key)}: {body}}}"
        _rewrite(path, text, rest)


METADATA = ([], 1, "pt", True, {"a": 1}, {"a": None}, {"a": {"b": "c"}}, {"a": ["b"]},
            {"format": "pt"}, {}, None)  # fmt: skip


@dataclass(frozen=True)
class SetMetadata:
    shard: int
    value: object

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None:
            return
        obj, rest = got
        obj["__metadata__"] = self.value
        _rewrite(path, _dump(obj), rest)


EXTRA_KEYS = ("extra", "dtype ", "DATA_OFFSETS", "__metadata__")


@dataclass(frozen=True)
class ExtraField:
    """An unknown field inside a tensor's entry, or an unknown top-level key."""

    shard: int
    tensor: str | None
    key: str
    value: object

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None:
            return
        obj, rest = got
        if self.tensor is None:
            obj[self.key + "_top"] = self.value
        elif isinstance(obj.get(self.tensor), dict):
            obj[self.tensor][self.key] = self.value
        _rewrite(path, _dump(obj), rest)


EXTRA_NAMES = (
    "model.extra.weight",
    "layers.0.mlp.up_proj.weight",
    "",
    "model.layers.0.mlp.up_proj.weight_scale_inv",
    "model.norm.weight.\u00e9",
    "model.extra\udc80.weight",
    "model.extra\nweight",
)
EXTRA_SHAPES = ([0], [0, 6], [9223372036854775808, 0], [0, 2**64 - 1], [2**62, 2**62, 0], [])


@dataclass(frozen=True)
class ExtraTensor:
    """Add a zero-size tensor (data_offsets [0, 0]; with shape [] it claims 2 bytes), also
    listed in the index when ``listed``."""

    shard: int
    name: str
    shape: list
    listed: bool

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        got = _header_obj(path)
        if got is None:
            return
        obj, rest = got
        obj[self.name] = {"dtype": "BF16", "shape": self.shape, "data_offsets": [0, 0]}
        _rewrite(path, _dump(obj), rest)
        if self.listed:
            _edit_index(root, lambda wm: wm.__setitem__(self.name, SHARDS[self.shard]))


@dataclass(frozen=True)
class Truncate:
    shard: int
    at: int

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        size = path.stat().st_size if _plain(path) else 0
        if size:
            os.truncate(path, self.at % size)


@dataclass(frozen=True)
class Append:
    shard: int
    data: bytes

    def apply(self, root: Path) -> None:
        if _plain(root / SHARDS[self.shard]):
            with open(root / SHARDS[self.shard], "ab") as fh:
                fh.write(self.data)


@dataclass(frozen=True)
class FlipData:
    """XOR one byte of the data region: the file stays valid, only the values change."""

    shard: int
    at: int
    xor: int

    def apply(self, root: Path) -> None:
        path = root / SHARDS[self.shard]
        data = bytearray(path.read_bytes() if _plain(path) else b"")
        parts = _split(bytes(data))
        if parts is None or not parts[2]:
            return
        start = 8 + parts[0]
        data[start + self.at % len(parts[2])] ^= self.xor
        path.write_bytes(bytes(data))


def _edit_index(root: Path, edit) -> None:
    """Apply ``edit(weight_map)`` to the index, if it is still a JSON object with one."""
    path = root / INDEX
    try:
        obj = json.loads(path.read_bytes() if _plain(path) else b"")
    except (ValueError, RecursionError):
        return
    if not isinstance(obj, dict) or not isinstance(obj.get("weight_map"), dict):
        return
    edit(obj["weight_map"])
    path.write_text(_dump(obj), encoding="utf-8")


SHARD_TARGETS = ("missing", "dotdot", "dotdot_backslash", "absolute", "base_file",
                 "directory", "fifo", "other_shard", "index_itself", "dot_slash", "", None, 7,
                 ["x"], "nul\u0000byte", "C:model.safetensors", ".", "trailing_slash",
                 "long_name", "surrogate", "symlink_dir_loop")  # fmt: skip


@dataclass(frozen=True)
class IndexShard:
    """Point one weight_map entry somewhere else."""

    tensor: str
    to: object

    def apply(self, root: Path) -> None:
        own = next(i for i, names in IN_SHARD.items() if self.tensor in names)
        special = {
            "missing": "model-00003-of-00003.safetensors",
            "dotdot": f"../{root.name}/{SHARDS[own]}",
            "dotdot_backslash": f"..\\{root.name}\\{SHARDS[own]}",
            "absolute": str(root / SHARDS[own]),
            "base_file": "../base/model.safetensors",
            "directory": "subdir.safetensors",
            "fifo": "pipe.safetensors",
            "other_shard": SHARDS[3 - own],
            "index_itself": INDEX,
            "dot_slash": f"./{SHARDS[own]}",
            "trailing_slash": f"{SHARDS[own]}/",
            "long_name": "x" * 300 + ".safetensors",
            "surrogate": "model-\udc80.safetensors",
            "symlink_dir_loop": "loop/model.safetensors",
        }
        target = special.get(self.to, self.to) if isinstance(self.to, str) else self.to
        if self.to == "symlink_dir_loop" and not (root / "loop").is_symlink():
            (root / "loop").symlink_to("loop")
        if self.to == "directory":
            (root / "subdir.safetensors").mkdir(exist_ok=True)
        if self.to == "fifo" and not (root / "pipe.safetensors").exists():
            os.mkfifo(root / "pipe.safetensors")
        if self.to == "base_file":
            (root.parent / "base").mkdir(exist_ok=True)
            save_file({n: BASE[n] for n in IN_SHARD[own]}, str(root.parent / "base" /
                                                             "model.safetensors"))  # fmt: skip
        _edit_index(root, lambda wm: wm.__setitem__(self.tensor, target))


@dataclass(frozen=True)
class IndexDrop:
    """Drop a tensor from weight_map (valid: it is then missing from the tuned side)."""

    tensor: str

    def apply(self, root: Path) -> None:
        _edit_index(root, lambda wm: wm.pop(self.tensor, None))


@dataclass(frozen=True)
class IndexDuplicate:
    """Repeat a weight_map key, naming the same shard or the other one (JSON by hand)."""

    tensor: str
    same: bool

    def apply(self, root: Path) -> None:
        path = root / INDEX
        try:
            obj = json.loads(path.read_bytes() if _plain(path) else b"")
        except (ValueError, RecursionError):
            return
        wm = obj.get("weight_map") if isinstance(obj, dict) else None
        if not isinstance(wm, dict) or self.tensor not in wm:
            return
        own = next(i for i, names in IN_SHARD.items() if self.tensor in names)
        dup = wm[self.tensor] if self.same else SHARDS[3 - own]
        text = _pairs_text([*wm.items(), (self.tensor, dup)])
        path.write_text(f'{{"metadata": {{}}, "weight_map": {text}}}', encoding="utf-8")


WEIGHT_MAPS = ([], "model.safetensors", None, 1, {}, [[UP, SHARDS[1]]], "missing")


@dataclass(frozen=True)
class IndexWeightMap:
    """weight_map of the wrong type (or no weight_map at all)."""

    value: object

    def apply(self, root: Path) -> None:
        obj = {"metadata": {}}
        if self.value != "missing":
            obj["weight_map"] = self.value
        if _absent_or_plain(root / INDEX):
            (root / INDEX).write_text(_dump(obj), encoding="utf-8")


@dataclass(frozen=True)
class IndexBytes:
    """Insert or replace one byte of the index (non-UTF-8 bytes among the choices)."""

    op: str
    at: int
    byte: int

    def apply(self, root: Path) -> None:
        path = root / INDEX
        if not _plain(path):
            return
        data = path.read_bytes()
        i = self.at % max(len(data), 1)
        tail = data[i:] if self.op == "insert" else data[i + 1 :]
        path.write_bytes(data[:i] + bytes([self.byte]) + tail)


@dataclass(frozen=True)
class IndexNested:
    """The index's weight_map (or the whole index) as ``depth`` levels of nested brackets."""

    where: str
    depth: int

    def apply(self, root: Path) -> None:
        deep = "[" * self.depth + "]" * self.depth
        text = deep if self.where == "index" else f'{{"metadata": {{}}, "weight_map": {deep}}}'
        if _absent_or_plain(root / INDEX):
            (root / INDEX).write_text(text, encoding="utf-8")


CONFIGS = ("deep", "not_utf8", "duplicate", "fifo", "directory", "[]", '{"text_config": []}',
           '{"tie_word_embeddings": "yes"}', '{"tie_word_embeddings": true}', "{")  # fmt: skip


@dataclass(frozen=True)
class Config:
    """A hostile config.json beside the tuned shards (read for tie_word_embeddings)."""

    what: str

    def apply(self, root: Path) -> None:
        path = root / "config.json"
        if not _absent_or_plain(path):
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if self.what == "fifo":
            os.mkfifo(path)
        elif self.what == "directory":
            path.mkdir()
        else:
            text = {"deep": "[" * 100_000 + "]" * 100_000,
                    "duplicate": '{"tie_word_embeddings": true, "tie_word_embeddings": false}',
                    }.get(self.what, self.what)  # fmt: skip
            data = b'{"model_type": "\xff"}' if self.what == "not_utf8" else text.encode()
            path.write_bytes(data)


FILES = {"index": INDEX, "shard1": SHARDS[1], "shard2": SHARDS[2]}
REPLACEMENTS = ("fifo", "directory", "empty", "dev_zero", "dangling_symlink", "symlink_loop",
                "symlink_outside", "symlink_inside")  # fmt: skip


@dataclass(frozen=True)
class Replace:
    """Replace the index or a shard by something that is not a plain file (or by a symlink
    to a copy of it: inside the folder that is valid, outside it escapes the folder)."""

    file: str
    by: str

    def apply(self, root: Path) -> None:
        path = root / FILES[self.file]
        if not _plain(path):
            return
        data = path.read_bytes()
        path.unlink()
        if self.by == "fifo":
            os.mkfifo(path)
        elif self.by == "directory":
            path.mkdir()
        elif self.by == "empty":
            path.write_bytes(b"")
        elif self.by == "dev_zero":
            path.symlink_to("/dev/zero")
        elif self.by == "dangling_symlink":
            path.symlink_to(root / "nowhere")
        elif self.by == "symlink_loop":
            path.symlink_to(path)
        else:
            inside = self.by == "symlink_inside"
            real = (root if inside else root.parent) / f"real-{path.name}"
            real.write_bytes(data)
            path.symlink_to(real)


# --------------------------------------------------------------------------------- strategies

_shard = st.sampled_from([1, 2])
_tensor = st.sampled_from([UP, Q, DOWN, NORM, SCALE])


@st.composite
def _shard_and_tensor(draw) -> tuple[int, str]:
    shard = draw(_shard)
    return shard, draw(st.sampled_from(IN_SHARD[shard]))


@st.composite
def _set_field(draw) -> SetField:
    shard, tensor = draw(_shard_and_tensor())
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    if field == "dtype":
        value = draw(st.sampled_from(DTYPES))
    elif field == "shape":
        value = draw(st.sampled_from(SHAPES) | st.lists(st.integers(-(2**65), 2**65),
                                                        max_size=3))  # fmt: skip
    else:
        value = draw(st.sampled_from(OFFSETS))
    return SetField(shard, tensor, field, value)


_byte = st.integers(0, 255)
_header_bytes = st.builds(HeaderBytes, _shard, st.sampled_from(["flip", "replace", "insert",
                          "delete"]), st.integers(0, 400), _byte, st.booleans())  # fmt: skip
_header_length = st.builds(HeaderLength, _shard, st.sampled_from(HEADER_LENGTHS))
_duplicate = _shard_and_tensor().flatmap(
    lambda st_: st.builds(DuplicateKey, st.just(st_[0]),
                          st.sampled_from([st_[1], "__metadata__"]), st.booleans())
)  # fmt: skip
_nested = st.builds(Nested, _shard, st.sampled_from(["shape", "metadata", "header"]),
                    st.sampled_from([1, 2, 50, 1000, 100_000]))  # fmt: skip
_metadata = st.builds(SetMetadata, _shard, st.sampled_from(METADATA))
_extra_field = _shard_and_tensor().flatmap(
    lambda st_: st.builds(ExtraField, st.just(st_[0]), st.sampled_from([st_[1], None]),
                          st.sampled_from(EXTRA_KEYS), st.sampled_from([1, "x", None, {}, []]))
)  # fmt: skip
_extra_tensor = st.builds(ExtraTensor, _shard, st.sampled_from(EXTRA_NAMES),
                          st.sampled_from(EXTRA_SHAPES), st.booleans())  # fmt: skip
_truncate = st.builds(Truncate, _shard, st.integers(0, 10**6))
_append = st.builds(Append, _shard, st.binary(min_size=1, max_size=16))
_flip_data = st.builds(FlipData, _shard, st.integers(0, 10**6), st.integers(1, 255))
_index_shard = st.builds(IndexShard, _tensor, st.sampled_from(SHARD_TARGETS))
_index_drop = st.builds(IndexDrop, _tensor)
_index_duplicate = st.builds(IndexDuplicate, _tensor, st.booleans())
_index_weight_map = st.builds(IndexWeightMap, st.sampled_from(WEIGHT_MAPS))
_index_bytes = st.builds(IndexBytes, st.sampled_from(["insert", "replace"]),
                         st.integers(0, 400), st.sampled_from([0xFF, 0xFE, 0xC3, 0x80, 0xED,
                                                               0x00, 0x22, 0x7B]))  # fmt: skip
_index_nested = st.builds(IndexNested, st.sampled_from(["weight_map", "index"]),
                          st.sampled_from([1000, 100_000]))  # fmt: skip
_config = st.builds(Config, st.sampled_from(CONFIGS))
_replace = st.builds(Replace, st.sampled_from(list(FILES)), st.sampled_from(REPLACEMENTS))

# Data flips first: shrinking moves towards the earlier branches, the valid files.
MUTATION = st.one_of(_flip_data, _set_field(), _header_bytes, _header_length, _duplicate,
                     _nested, _metadata, _extra_field, _extra_tensor, _truncate, _append,
                     _index_shard, _index_drop, _index_duplicate, _index_weight_map,
                     _index_bytes, _index_nested, _config, _replace)  # fmt: skip

# What is given as TUNED, by percent: mostly the folder; rarely a FIFO (a hang costs HANG_S),
# a symlink to itself or to /dev/zero.
TARGETS = ["folder"] * 70 + ["index"] * 10 + ["shard1"] * 8 + ["shard2"] * 8
TARGETS += ["fifo.safetensors", "fifo.index.json", "loop.safetensors", "dev_zero.safetensors"]
_target = st.integers(0, 99).map(TARGETS.__getitem__)


# ------------------------------------------------------------------------------ run and judge


class Hang(BaseException):
    """Raised by the alarm in a ``main()`` call stuck past HANG_S (BaseException, so no
    ``except Exception`` in the code under test turns it into an ordinary error)."""


def _unblock_fifos(root: Path) -> None:
    """Open every FIFO under ``root`` for writing and close it: a reader stuck in open()
    then sees end of file."""
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_fifo():
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))


def _on_alarm(signum, frame):
    raise Hang


@dataclass
class Outcome:
    code: int | None
    err: str
    seconds: float
    escaped: BaseException | None = None


def run_diff(base: Path, tuned: Path, out: Path, root: Path) -> Outcome:
    """``main(["diff", ...])`` with stderr captured; past HANG_S the FIFOs under ``root``
    are unblocked, and HANG_S + 10 s later an alarm raises :class:`Hang` in the call."""
    argv = ["diff", str(base), str(tuned), "--out", str(out), "--quiet", "--no-spectra"]
    err, sink = io.StringIO(), io.StringIO()
    timer = threading.Timer(HANG_S, _unblock_fifos, (root,))
    old = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    timer.start()
    signal.setitimer(signal.ITIMER_REAL, HANG_S + 10)
    code, escaped = None, None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
            code = main(argv)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: B036 - everything escaping main() is recorded
        escaped = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        timer.cancel()
    return Outcome(code, err.getvalue(), time.monotonic() - start, escaped)


def _strict_json(data: bytes) -> object:
    """JSON that refuses duplicate keys (ValueError), like the safetensors header check."""

    def hook(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
        return dict(pairs)

    return json.loads(data.decode("utf-8"), object_pairs_hook=hook)


class MustRefuseError(Exception):
    """The input is bad: ``main()`` must exit 2 (why, for the failure message)."""


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one file as safetensors.torch.load_file reads it; MustRefuseError where
    the library refuses the file or its header has duplicate keys."""
    if not path.is_file():
        raise MustRefuseError(f"{path} is not a regular file")
    parts = _split(path.read_bytes())
    try:
        _strict_json(parts[1] if parts else b"")
    except (ValueError, RecursionError) as exc:
        raise MustRefuseError(f"{path}: header is not strict JSON ({type(exc).__name__})") from None
    try:
        return load_file(str(path))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MustRefuseError(f"{path}: safetensors.load_file refuses it ({first})") from None


def _load_index(index: Path) -> dict[str, torch.Tensor]:
    root = index.parent
    if not index.is_file():
        raise MustRefuseError(f"{index} is not a regular file")
    try:
        obj = _strict_json(index.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise MustRefuseError(f"{index}: {type(exc).__name__}: {exc}"[:300]) from None
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise MustRefuseError(f"{index}: no weight_map object")
    shards: dict[str, dict[str, torch.Tensor]] = {}
    out = {}
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard or "\x00" in shard or "\\" in shard:
            raise MustRefuseError(f"{index}: bad shard path {shard!r}")
        if shard.startswith("/") or ".." in shard.split("/") or ":" in shard:
            raise MustRefuseError(f"{index}: shard path {shard!r} escapes the folder")
        key = os.path.normpath(shard)
        try:
            inside = (root / key).resolve().is_relative_to(root.resolve())
        except (OSError, RuntimeError):  # a symlink loop
            raise MustRefuseError(f"{index}: shard {shard!r} cannot be resolved") from None
        if not inside:
            raise MustRefuseError(f"{index}: shard {shard!r} resolves outside the folder")
        if key not in shards:
            shards[key] = _load_shard(root / key)
        if name not in shards[key]:
            raise MustRefuseError(f"{index}: {name!r} is not in {shard}")
        out[name] = shards[key][name]
    return out


def _load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """The folder rules of the reader for what these tests build: the index if it is a
    regular file, else the one regular ``*.safetensors`` file."""
    if (folder / INDEX).is_file():
        return _load_index(folder / INDEX)
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    indexes = sorted(p for p in folder.glob("*.safetensors.index.json") if p.is_file())
    if len(files) == 1 and not indexes:
        return _load_shard(files[0])
    if len(indexes) == 1:
        return _load_index(indexes[0])
    raise MustRefuseError(f"{folder}: {len(files)} safetensors files, {len(indexes)} indexes")


def expected_tuned(root: Path, tuned: Path) -> dict[str, torch.Tensor]:
    """The tuned tensors a correct reader sees, from safetensors.torch.load_file;
    MustRefuseError when the input must be refused."""
    if tuned.is_dir():
        return _load_folder(tuned)
    if not tuned.is_file():
        raise MustRefuseError(f"{tuned} is not a regular file")
    if tuned.name.endswith(".index.json"):
        return _load_index(tuned)
    return _load_shard(tuned)


@dataclass
class Pair:
    name: str
    base: torch.Tensor
    tuned: torch.Tensor


def expected_pairs(tuned: dict[str, torch.Tensor]) -> tuple[list[Pair], list[str], list[str]]:
    """Pairs (by pairing key, non-floats skipped), missing_in_base, missing_in_tuned;
    MustRefuseError on an ambiguous name, a stray block scale or a shape mismatch."""
    keyed: dict[str, str] = {}
    for name, t in tuned.items():
        if name.endswith("_scale_inv"):
            weight = tuned.get(name[: -len("_scale_inv")])
            if weight is None or weight.dtype in FLOAT_DTYPES:  # a scale of no fp8 weight
                raise MustRefuseError(f"block scale {name!r} without an fp8 weight")
            continue
        if t.dtype not in FLOAT_DTYPES:
            continue
        key = pairing_key(name)
        if key in keyed:
            raise MustRefuseError(f"{name!r} and {keyed[key]!r} pair with the same base tensor")
        keyed[key] = name
    base_keys = {pairing_key(n): n for n in BASE}
    pairs = []
    for key, name in keyed.items():
        if key in base_keys:
            b, t = BASE[base_keys[key]], tuned[name]
            if tuple(b.shape) != tuple(t.shape):
                why = f"{name!r}: shape {tuple(t.shape)} against the base's {tuple(b.shape)}"
                raise MustRefuseError(why)
            pairs.append(Pair(name, b, t))
    missing_in_base = sorted(n for k, n in keyed.items() if k not in base_keys)
    missing_in_tuned = sorted(n for k, n in base_keys.items() if k not in keyed)
    return pairs, missing_in_base, missing_in_tuned


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


def check_figures(out: Path, tuned: dict[str, torch.Tensor]) -> None:
    """tensors.csv and summary.json against the float64 oracle (both sides as bf16)."""
    pairs, missing_in_base, missing_in_tuned = expected_pairs(tuned)
    with open(out / "tensors.csv", newline="", encoding="utf-8") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == sorted(p.name for p in pairs), "tensors.csv rows"
    for p in pairs:
        row = rows[p.name]
        a, b = round_bf16(to_f64(p.base)), round_bf16(to_f64(p.tuned))
        want = diff_stats_oracle(a, b, rel_tols=(REL_TOL,), abs_tols=(ATOL,))
        n = want["numel"]
        assert int(row["numel"]) == n, p.name
        assert row["dtype_tuned"] == str(p.tuned.dtype).removeprefix("torch."), p.name
        assert int(row["n_nonfinite"]) == want["n_nonfinite_w0"] + want["n_nonfinite_w1"]
        for col, count in (("equal_fraction", want["n_equal"]),
                           ("unchanged_fraction", want["n_within_rel"][0]),
                           ("unchanged_fraction_atol", want["n_within_abs"][0])):  # fmt: skip
            assert _num(row[col]) == (count / n if n else None), (p.name, col, row[col], count)
        frob = math.sqrt(want["sum_sq_delta"])
        assert _num(row["frobenius_delta"]) == pytest.approx(frob, rel=1e-12, abs=1e-300), p.name
        assert _num(row["max_abs_delta"]) == (want["max_abs_delta"] if n else None), p.name
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["missing_in_base"] == missing_in_base
    assert summary["missing_in_tuned"] == missing_in_tuned


def _same_layout(root: Path) -> bool:
    """True when only data bytes changed: headers, sizes and the index as they were."""
    for name, good in PRISTINE.items():
        path = root / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size != len(good):
            return False
        data = path.read_bytes()
        if name == INDEX:
            if data != good:
                return False
        elif data[: 8 + _split(good)[0]] != good[: 8 + _split(good)[0]]:
            return False
    return True


def _make_tuned(root: Path) -> None:
    root.mkdir(parents=True)
    for name, data in PRISTINE.items():
        (root / name).write_bytes(data)


def _tuned_arg(root: Path, target: str) -> Path:
    if target.startswith("fifo"):
        fifo = root / f"model{target.removeprefix('fifo')}"
        os.mkfifo(fifo)
        return fifo
    if target in ("loop.safetensors", "dev_zero.safetensors"):
        link = root / target
        link.symlink_to(link if target.startswith("loop") else Path("/dev/zero"))
        return link
    return {"folder": root, "index": root / INDEX, "shard1": root / SHARDS[1],
            "shard2": root / SHARDS[2]}[target]  # fmt: skip


def check_contract(
    base: Path, root: Path, tuned: Path, named: list[Path], tensor: str | None = None
) -> str:
    """Run the diff of ``tuned`` (under ``root``) and check the contract. An error line must
    hold one of the paths ``named`` and, when given, ``tensor`` quoted. Returns "exit 0"
    or "exit 2"."""
    try:
        expected: dict | MustRefuseError = expected_tuned(root, tuned)
        if isinstance(expected, dict):
            expected_pairs(expected)
    except MustRefuseError as why:
        expected = why
    except OSError as exc:  # a name too long for the file system, say
        expected = MustRefuseError(f"{exc.filename}: {exc.strerror}")
    out = root.parent / "out"
    got = run_diff(base, tuned, out, root)
    if got.escaped is not None:
        exc = got.escaped
        if isinstance(exc, Hang):
            raise AssertionError(f"hang: main() still running after {got.seconds:.0f} s")
        msg = f"{type(exc).__name__} escaped main(): {str(exc)[:300]}"
        raise AssertionError(msg) from exc
    assert got.seconds < HANG_S, f"hang: main() took {got.seconds:.0f} s (rc {got.code})"
    assert got.code in (0, 2), f"exit status {got.code}, stderr {got.err[:500]!r}"
    if got.code == 2:
        lines = got.err.splitlines()
        assert len(lines) == 1, f"exit 2 with {len(lines)} stderr lines: {got.err[:1000]!r}"
        line = lines[0]
        assert line.startswith("paramgeom diff: error: "), line
        assert "Traceback" not in line, line
        assert any(str(p) in line for p in named), f"names none of {named}: {line}"
        assert tensor is None or f"'{tensor}'" in line, f"does not name {tensor!r}: {line}"
        valid = _same_layout(root) and (tuned == root or _plain(tuned))
        assert not valid, f"refused a valid file: {line}"
        return "exit 2"
    assert got.err.strip() == "", f"exit 0 with stderr {got.err[:500]!r}"
    if isinstance(expected, MustRefuseError):
        raise AssertionError(f"exit 0 on bad input: {expected}")
    check_figures(out, expected)
    return "exit 0"


def _named(mutations, target: str, root: Path) -> tuple[list[Path], str | None]:
    """What an error line must name: the mutated shard when one shard alone was changed and
    read (and the tensor, for one dtype or shape edit), else the tuned folder (every tuned
    path lies under it)."""
    shards = {getattr(m, "shard", None) for m in mutations}
    # A stray block scale is reported where its weight is (maybe the other shard).
    scale = any(isinstance(m, ExtraTensor) and m.name.endswith("_scale_inv") for m in mutations)
    if len(shards) != 1 or None in shards or target not in ("folder", "index") or scale:
        return [root], None
    (m,) = mutations if len(mutations) == 1 else (None,)
    tensor = m.tensor if isinstance(m, SetField) and m.field != "data_offsets" else None
    # A tensor added to the index too puts its name in the index: refused there first.
    index_too = any(isinstance(m, ExtraTensor) and m.listed for m in mutations)
    return [root / SHARDS[shards.pop()]] + ([root / INDEX] if index_too else []), tensor


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile_base")
    save_file(dict(BASE), str(folder / "model.safetensors"))
    return folder


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3), target=_target)  # fmt: skip
def test_diff_survives_hostile_tuned_checkpoints(base_folder, mutations, target):
    with tempfile.TemporaryDirectory(prefix="hostile") as tmp:
        root = Path(tmp) / "tuned"
        _make_tuned(root)
        for m in mutations:
            m.apply(root)
            event(type(m).__name__)
        tuned = _tuned_arg(root, target)
        try:
            event(check_contract(base_folder, root, tuned, *_named(mutations, target, root)))
        finally:
            _unblock_fifos(root)
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------ pinned failures (regressions)
# Each was found by the property test; "Was": fixed since, "Open": fails until fixed.


@pytest.fixture
def pair(tmp_path, base_folder) -> tuple[Path, Path]:
    """The base folder and a fresh valid tuned folder."""
    root = tmp_path / "tuned"
    _make_tuned(root)
    return base_folder, root


def _refused(base: Path, root: Path, tuned: Path, *must_name: str) -> str:
    """Exit 2 within HANG_S, nothing escaping, one stderr line naming each of ``must_name``."""
    try:
        got = run_diff(base, tuned, root.parent / "out", root)
    finally:
        _unblock_fifos(root)
    assert got.escaped is None, f"{type(got.escaped).__name__} escaped main(): {got.escaped}"
    assert got.seconds < HANG_S, f"hang: main() took {got.seconds:.0f} s (rc {got.code})"
    assert got.code == 2, (got.code, got.err)
    lines = got.err.splitlines()
    assert len(lines) == 1, got.err
    assert lines[0].startswith("paramgeom diff: error: "), lines[0]
    for what in must_name:
        assert what in lines[0], (what, lines[0])
    return lines[0]


@pytest.mark.parametrize("where", ["header", "shape", "metadata"])
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_header_json(pair, where, depth):
    """Was: RecursionError escaping main() (json.loads of a header of nested brackets)."""
    base, root = pair
    Nested(2, where, depth).apply(root)
    _refused(base, root, root, str(root / SHARDS[2]))


@pytest.mark.parametrize("same", [True, False], ids=["same_shard", "other_shard"])
def test_duplicate_key_in_index_weight_map(pair, same):
    """Was (same shard): exit 0, the duplicate silently accepted (json.loads keeps the last)."""
    base, root = pair
    IndexDuplicate(UP, same).apply(root)
    _refused(base, root, root, str(root / INDEX), f"'{UP}'")


@pytest.mark.parametrize("shape", [[2**63, 0], [0, 2**64 - 1]], ids=["2^63x0", "0x2^64-1"])
@pytest.mark.parametrize("target", ["folder", "shard1"])
def test_zero_size_tensor_with_a_dimension_past_int64(pair, shape, target):
    """Was: exit 0; numel 0 passes the byte-count check, but no torch shape holds a
    dimension >= 2^63 (safetensors.torch.load_file fails in reshape: "Overflow when
    unpacking long long")."""
    base, root = pair
    ExtraTensor(1, "model.extra.weight", shape, listed=True).apply(root)
    _refused(base, root, _tuned_arg(root, target), str(root / SHARDS[1]), "'model.extra.weight'")


@pytest.mark.parametrize("suffix", [".safetensors", ".index.json"])
def test_fifo_given_as_the_tuned_checkpoint(pair, suffix):
    """Was: main() blocked in open() of the FIFO (read_header / the index read) until a
    writer came."""
    base, root = pair
    fifo = _tuned_arg(root, f"fifo{suffix}")
    _refused(base, root, fifo, str(fifo))


@pytest.mark.parametrize("how", ["shard_is_a_loop", "folder_is_a_loop"])
def test_symlink_loop_in_a_shard_path(pair, how):
    """Open: RuntimeError "Symlink loop from ..." escapes main() (Path.resolve() in
    reader._shard_path raises RuntimeError, not OSError, on a loop)."""
    base, root = pair
    if how == "shard_is_a_loop":
        Replace("shard1", "symlink_loop").apply(root)  # model-00001-of-00002 -> itself
    else:
        IndexShard(UP, "symlink_dir_loop").apply(root)  # "loop/model.safetensors", loop -> loop
    _refused(base, root, root, str(root))


def test_shard_name_too_long_for_the_file_system(pair):
    """Open: OSError ENAMETOOLONG escapes main() (Path.exists() of a 312-byte shard name in
    reader._open_index: exists() swallows only ENOENT, ENOTDIR, EBADF and ELOOP)."""
    base, root = pair
    IndexShard(UP, "long_name").apply(root)
    _refused(
        base, root, root, str(root / ("x" * 300 + ".safetensors")), f"listed in {INDEX}", f"'{UP}'"
    )


@pytest.mark.parametrize(
    ("target", "listed"), [("folder", True), ("shard1", True), ("folder", False)],
    ids=["folder", "shard1", "folder_unlisted"],
)  # fmt: skip
def test_tensor_name_with_a_lone_surrogate(pair, target, listed):
    """Open: a header key spelled with the JSON escape \\udc80 (a lone surrogate, which
    safetensors refuses: "lone leading surrogate in hex escape") passes read_header. Listed
    (or the shard given alone), the run computes, then writing report.md fails and the one
    line names no file: "'utf-8' codec can't encode character '\\udc80' ... surrogates not
    allowed" (UnicodeEncodeError from report/render.py, caught as a ValueError); not in the
    index, exit 0 on a shard safetensors cannot open."""
    base, root = pair
    ExtraTensor(1, "model.extra\udc80.weight", [0], listed=listed).apply(root)
    # Listed, the index holds the name too, and is read (and refused) first.
    named = [root / SHARDS[1]] + ([root / INDEX] if listed and target == "folder" else [])
    check_contract(base, root, _tuned_arg(root, target), named)


def test_deeply_nested_config_json_beside_the_shards(pair):
    """config.json is optional: ignored (exit 0, figures as without it) or refused in one
    line. Was (100000 nested brackets): RecursionError escaping main() (json.loads in
    pairing._config, which caught only OSError and ValueError)."""
    base, root = pair
    Config("deep").apply(root)
    check_contract(base, root, root, [root])
