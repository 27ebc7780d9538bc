"""Read ``torch.distributed.checkpoint`` (DCP) folders: what FSDP2, torchtitan and other
DCP-based trainers write, and Megatron-Core's ``torch_dist`` format (DCP underneath).

A DCP folder holds ``.metadata`` (a pickle: for every state-dict key its global shape and
dtype and the chunks it was saved in, and for every chunk the data file, byte offset and
length) and data files ``__<rank>_<n>.distcp``, in which each tensor chunk is one
``torch.save`` archive written at its offset.

Safety. ``torch.distributed.checkpoint.FileSystemReader.read_metadata`` is a raw
``pickle.load``: a crafted ``.metadata`` runs any code it likes. Here the pickle is read by
:class:`_MetadataUnpickler`, which admits only the globals DCP writes (its metadata
dataclasses, ``torch.Size``, torch dtypes and the layout / memory-format / path helpers) and
maps each to an inert stand-in defined below: no torch or project class is constructed, no
function of the pickle's choosing is called, and any other global is refused with a message
naming it. The stand-ins' fields are then checked (:func:`parse_metadata`): types, shapes
(at most 2^48 per dimension), chunk bounds, that each tensor's chunks tile it exactly (no
gap, no overlap), data file names that stay inside the folder and byte ranges inside their
files. Each chunk's archive is read like a ``.pt`` file (:class:`~paramgeom.checkpoints.
torch_zip.TorchZip`: torch's ``weights_only`` unpickler, every storage record checked
against the archive's bytes) when its tensor is first read, and must hold one tensor of the
chunk's shape and the tensor's dtype.

Streaming: a tensor is assembled from its chunks into one new buffer (one tensor and one
chunk in memory at a time, never the state dict); a block of rows reads only the rows of
each chunk that fall inside it.

Keys that are not model weights are skipped and listed (:attr:`DcpLayout.skipped`):
non-tensor entries (DCP's ``BytesStorageMetadata``: step counters, RNG states, config) and
everything under the top-level keys of :data:`NON_MODEL_PREFIXES` (optimizer state,
schedulers, dataloaders, train state). Chunks written with storage transforms (DCP's
experimental compression extensions) or the safetensors serialisation are refused by name.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import stat
from dataclasses import dataclass
from pathlib import Path

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular, read_regular_bytes
from paramgeom.checkpoints.records import Record, record_class

__all__ = [
    "METADATA_FILE",
    "NON_MODEL_PREFIXES",
    "DcpChunk",
    "DcpLayout",
    "DcpTensor",
    "is_dcp_folder",
    "parse_metadata",
]

METADATA_FILE = ".metadata"
DATA_SUFFIX = ".distcp"
NON_MODEL_PREFIXES = (
    "optimizer",
    "optim",
    "optimizer_state",
    "optimizers",
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "dataloader",
    "train_state",
    "rng_state",
    "rng",
)
"""First components of a DCP key (``optimizer.state.layers.0.w.exp_avg``) that are never model
weights: what torchtitan, FSDP2 recipes and ``get_state_dict`` save beside the model."""
_MAX_DIM = 1 << 48
_METADATA_LIMIT = 1 << 31  # bytes: a 200B model's metadata is tens of MB


def is_dcp_folder(folder: Path) -> bool:
    """True when ``folder`` is a DCP checkpoint: a ``.metadata`` file and data files."""
    if not (folder / METADATA_FILE).is_file():
        return False
    return any(p.is_file() for p in folder.glob(f"*{DATA_SUFFIX}"))


# ------------------------------------------------------------------ restricted unpickling


_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_RECORDS: dict[tuple[str, str], type[Record]] = {
    (_METADATA_MODULE, name): record_class(name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
    )
}
# The save plans some writers keep in the metadata (Megatron-Core's ``all_local_plans``).
_PLANNER_MODULE = "torch.distributed.checkpoint.planner"
for _name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesWriteData"):
    _RECORDS[(_PLANNER_MODULE, _name)] = record_class(_name)
# _StorageInfo has lived in filesystem.py (and, in some releases, in metadata.py).
_RECORDS[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = record_class("_StorageInfo")
_RECORDS[(_METADATA_MODULE, "_StorageInfo")] = _RECORDS[
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo")
]


def _size(*args: object) -> tuple:
    """``torch.Size(seq)``: a tuple of the sequence's items (checked when used)."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else ()


def _text_of(*args: object) -> str:
    return "/".join(str(a) for a in args if isinstance(a, str))


def _value(*args: object) -> object:
    return args[0] if args else None


# Globals DCP pickles that are functions or values: each maps to something inert.
_HELPERS: dict[tuple[str, str], object] = {
    ("torch", "Size"): _size,
    ("torch.serialization", "_get_layout"): _text_of,  # "torch.strided" -> the name
    (_METADATA_MODULE, "_MEM_FORMAT_ENCODING"): _value,  # an enum built from an int
    ("pathlib", "PosixPath"): _text_of,  # StorageMeta.checkpoint_id
    ("pathlib", "WindowsPath"): _text_of,
    ("pathlib", "PurePosixPath"): _text_of,
    ("pathlib", "PureWindowsPath"): _text_of,
    ("pathlib", "Path"): _text_of,
    ("collections", "OrderedDict"): dict,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only the globals of DCP metadata, each as an inert stand-in."""

    def find_class(self, module: str, name: str) -> object:
        key = (module, name)
        if key in _RECORDS:
            return _RECORDS[key]
        if key in _HELPERS:
            return _HELPERS[key]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # a dtype is a value; calling one raises TypeError
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not part of DCP metadata (refused: paramgeom never "
            "unpickles arbitrary objects)"
        )

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("persistent ids are not part of DCP metadata")


# ------------------------------------------------------------------ the checked layout


@dataclass(frozen=True)
class DcpChunk:
    """One saved piece of a tensor: its box in the tensor and where its archive lies."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    offset: int
    """Byte offset of the chunk's ``torch.save`` archive in ``file``."""
    length: int


@dataclass(frozen=True)
class DcpTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[DcpChunk, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class DcpLayout:
    """What a DCP folder holds, checked: its model tensors and the keys skipped."""

    tensors: dict[str, DcpTensor]
    skipped: dict[str, str]
    """Skipped key -> why (non-tensor entry, optimizer state, ...)."""
    files: tuple[Path, ...]
    """The data files the tensors' chunks live in, sorted."""


def _ints(x: object, what: str, meta: Path, name: str | None) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in x
    ):
        raise CheckpointError(meta, name, f"{what} is not a list of integers: {str(x)[:80]}")
    return tuple(x)


def _skip_reason(key: str) -> str | None:
    head = key.split(".", 1)[0]
    if head in NON_MODEL_PREFIXES:
        return f"not a model weight ({head} state)"
    return None


def _data_file(folder: Path, meta: Path, name: str, rel: object) -> Path:
    """The data file a storage entry names: a plain ``.distcp`` file of the folder."""
    if (
        not isinstance(rel, str)
        or not rel
        or "/" in rel
        or "\\" in rel
        or "\x00" in rel
        or rel in (".", "..")
    ):
        raise CheckpointError(
            meta, name, f"data file {str(rel)[:80]!r} is not a file name inside the folder"
        )
    return folder / rel


def tiles_exactly(shape: tuple[int, ...], chunks: list[tuple[tuple, tuple]]) -> str | None:
    """None when the chunk boxes tile ``shape`` (inside it, no overlap, volumes adding up to
    the whole); else what is wrong."""
    for offsets, sizes in chunks:
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            return f"chunk at {list(offsets)} has {len(offsets)} dims, the tensor {len(shape)}"
        if any(o < 0 or s < 0 or o + s > n for o, s, n in zip(offsets, sizes, shape, strict=True)):
            return f"chunk at {list(offsets)} of size {list(sizes)} lies outside {list(shape)}"
    if sum(math.prod(s) for _, s in chunks) != math.prod(shape):
        return "its chunks do not cover it exactly (their sizes do not add up to its size)"
    if not shape:
        return None if len(chunks) == 1 else "a 0-d tensor saved in several chunks"
    boxes = sorted((o, s) for o, s in chunks if math.prod(s) > 0)
    # (Equal volumes and no overlap mean an exact tiling.) The usual layouts split one
    # dimension only (FSDP's rows, tensor parallelism's columns): then the boxes overlap iff
    # their intervals on that dimension do, checked in order, O(k log k).
    varying = [d for d in range(len(shape)) if len({(b[0][d], b[1][d]) for b in boxes}) > 1]
    if len(varying) <= 1:
        d = varying[0] if varying else 0
        spans = sorted((o[d], o[d] + s[d], o) for o, s in boxes)
        for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
            if start < end:
                return f"chunks at {list(first)} and {list(second)} overlap"
        return None
    # Otherwise a sweep along dim 0: boxes whose dim-0 ranges overlap must be disjoint
    # elsewhere.
    active: list[tuple[tuple, tuple]] = []
    for o, s in boxes:
        active = [(ao, asz) for ao, asz in active if ao[0] + asz[0] > o[0]]
        for ao, asz in active:
            if all(
                max(a, b) < min(a + m, b + n)
                for a, m, b, n in zip(ao[1:], asz[1:], o[1:], s[1:], strict=True)
            ):
                return f"chunks at {list(ao)} and {list(o)} overlap"
        active.append((o, s))
    return None


def parse_metadata(folder: Path) -> DcpLayout:
    """Read and check ``folder/.metadata`` (see the module docstring); raise
    :class:`CheckpointError` naming the file (and the key) for anything malformed."""
    meta = folder / METADATA_FILE
    raw = read_regular_bytes(meta, _METADATA_LIMIT, "DCP metadata")
    try:
        root = _MetadataUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(meta, None, f"DCP metadata refused: {exc}") from None
    except Exception as exc:  # truncated or corrupt pickle: EOFError, ValueError, ...
        raise CheckpointError(
            meta, None, f"not readable DCP metadata ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    if not isinstance(root, Record) or root.kind != "Metadata":
        raise CheckpointError(meta, None, "not DCP metadata (no Metadata object at the top)")
    fields = root.fields()
    entries = fields.get("state_dict_metadata")
    storage = fields.get("storage_data")
    if not isinstance(entries, dict):
        raise CheckpointError(meta, None, "DCP metadata has no state_dict_metadata")
    if not isinstance(storage, dict):
        raise CheckpointError(
            meta, None, "DCP metadata has no storage_data (not written by FileSystemWriter?)"
        )
    where = _storage_index(folder, meta, storage)
    tensors: dict[str, DcpTensor] = {}
    skipped: dict[str, str] = {}
    for key, entry in entries.items():
        if not isinstance(key, str):
            raise CheckpointError(meta, None, f"state-dict key {str(key)[:80]!r} is not a string")
        if not isinstance(entry, Record) or entry.kind not in (
            "TensorStorageMetadata",
            "BytesStorageMetadata",
        ):
            raise CheckpointError(meta, key, "unknown kind of state-dict entry")
        if entry.kind == "BytesStorageMetadata":
            skipped[key] = "not a tensor (saved as bytes)"
            continue
        reason = _skip_reason(key)
        if reason is not None:
            skipped[key] = reason
            continue
        tensors[key] = _tensor(meta, key, entry, where)
    files = tuple(sorted({c.file for t in tensors.values() for c in t.chunks}))
    return DcpLayout(tensors, skipped, files)


def _storage_index(folder: Path, meta: Path, storage: dict) -> dict[tuple, tuple]:
    """(key, chunk offsets) -> (data file, byte offset, length), every range checked
    against its file's size."""
    sizes: dict[Path, int] = {}
    out: dict[tuple, tuple] = {}
    for index, info in storage.items():
        if not (isinstance(index, Record) and index.kind == "MetadataIndex"):
            raise CheckpointError(meta, None, "storage_data has a key that is not a MetadataIndex")
        if not (isinstance(info, Record) and info.kind == "_StorageInfo"):
            raise CheckpointError(meta, None, "storage_data has an entry that is not _StorageInfo")
        idx, inf = index.fields(), info.fields()
        name = idx.get("fqn")
        if not isinstance(name, str):
            raise CheckpointError(meta, None, "storage_data names a key that is not a string")
        if idx.get("offset") is None:
            continue  # a bytes entry
        offsets = _ints(idx.get("offset"), "chunk offset", meta, name)
        if inf.get("transform_descriptors"):
            raise CheckpointError(
                meta,
                name,
                "chunk saved with storage transforms "
                f"{str(inf.get('transform_descriptors'))[:60]} (DCP's experimental compression "
                "extensions), which paramgeom does not read",
            )
        file = _data_file(folder, meta, name, inf.get("relative_path"))
        start, length = inf.get("offset"), inf.get("length")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (start, length)
        ):
            raise CheckpointError(
                meta, name, f"bad byte range {start!r}, {length!r} in {file.name}"
            )
        if file not in sizes:
            try:
                st = os.stat(file)
            except FileNotFoundError:
                raise CheckpointError(file, name, "DCP data file is missing") from None
            except OSError as exc:
                raise CheckpointError(file, name, f"cannot read: {exc.strerror or exc}") from None
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(file, name, "DCP data file is not a regular file")
            sizes[file] = st.st_size
        if start + length > sizes[file]:
            raise CheckpointError(
                file,
                name,
                f"chunk at {list(offsets)} lies at bytes [{start}, {start + length}) but the "
                f"file has {sizes[file]} (truncated?)",
            )
        if (name, offsets) in out:
            raise CheckpointError(meta, name, f"chunk at {list(offsets)} is listed twice")
        out[(name, offsets)] = (file, start, length)
    return out


def _tensor(meta: Path, key: str, entry: Record, where: dict) -> DcpTensor:
    f = entry.fields()
    props = f.get("properties")
    dtype = None
    if isinstance(props, Record):
        pst = props.state  # TensorProperties.__getstate__ gives (dtype, layout, ...)
        dtype = pst[0] if isinstance(pst, tuple) and pst else props.fields().get("dtype")
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(meta, key, "no dtype in its tensor properties")
    shape = _ints(f.get("size"), "shape", meta, key)
    if any(n < 0 or n > _MAX_DIM for n in shape):
        raise CheckpointError(meta, key, f"bad shape {list(shape)}")
    raw_chunks = f.get("chunks")
    if not isinstance(raw_chunks, (list, tuple)):
        raise CheckpointError(meta, key, "no chunk list")
    boxes = []
    for c in raw_chunks:
        if not (isinstance(c, Record) and c.kind == "ChunkStorageMetadata"):
            raise CheckpointError(meta, key, "a chunk entry is not ChunkStorageMetadata")
        cf = c.fields()
        boxes.append(
            (_ints(cf.get("offsets"), "chunk offsets", meta, key),
             _ints(cf.get("sizes"), "chunk sizes", meta, key))
        )  # fmt: skip
    problem = tiles_exactly(shape, boxes)
    if problem is not None:
        raise CheckpointError(meta, key, f"shape {list(shape)}: {problem}")
    chunks = []
    for offsets, sizes in boxes:
        found = where.get((key, offsets))
        if found is None:
            raise CheckpointError(
                meta, key, f"chunk at {list(offsets)} has no storage entry (no data file)"
            )
        chunks.append(DcpChunk(offsets, sizes, *found))
    return DcpTensor(key, dtype, shape, tuple(chunks))


# ------------------------------------------------------------------ reading chunks


def chunk_spec(chunk: DcpChunk, tensor: DcpTensor):
    """The checked :class:`~paramgeom.checkpoints.torch_zip.TensorSpec` of a chunk's
    archive: one tensor of the chunk's shape and the tensor's dtype, its bytes inside the
    archive."""
    from paramgeom.checkpoints.torch_zip import TorchZip

    with open_regular(chunk.file, tensor.name) as fh:
        try:
            archive = TorchZip(chunk.file, fh, chunk.length, base=chunk.offset)
        except CheckpointError as exc:
            raise CheckpointError(
                chunk.file, tensor.name, f"chunk at {list(chunk.offsets)}: {exc.message}"
            ) from None
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                chunk.file,
                tensor.name,
                f"chunk at {list(chunk.offsets)} refused by the weights_only unpickler: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else 'refused'}",
            ) from None
        except Exception as exc:
            raise CheckpointError(
                chunk.file,
                tensor.name,
                f"chunk at {list(chunk.offsets)} is not a readable torch.save archive "
                f"({type(exc).__name__})",
            ) from None
    t = archive.obj
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(
            chunk.file,
            tensor.name,
            f"chunk at {list(chunk.offsets)} holds a {type(t).__name__}, not a tensor",
        )
    spec = archive.spec(tensor.name, t)
    if spec.dtype != tensor.dtype or spec.shape != chunk.sizes:
        raise CheckpointError(
            chunk.file,
            tensor.name,
            f"chunk at {list(chunk.offsets)} holds {spec.dtype} {list(spec.shape)}, the "
            f"metadata says {tensor.dtype} {list(chunk.sizes)}",
        )
    return spec, archive.byteswap
