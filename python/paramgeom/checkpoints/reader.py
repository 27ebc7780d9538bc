"""Open checkpoints of every supported layout behind one interface (DESIGN.md "Checkpoints").

Accepted inputs (:func:`open_checkpoint`):

- a Hugging Face model folder: ``model.safetensors.index.json`` + shards (the index wins),
  else ``model.safetensors``, else exactly one ``*.safetensors`` file, else exactly one
  ``*.safetensors.index.json``, else ``pytorch_model.bin.index.json`` + ``.bin`` shards,
  else ``pytorch_model.bin``, else exactly one ``*.bin`` / ``*.pt`` / ``*.pth`` file;
- a single ``.safetensors`` file, or an index file ``*.index.json`` itself;
- a Hugging Face repo id ``org/name[@revision]`` where no such path exists: its snapshot
  folder, from the local cache first, downloaded only where allowed
  (:mod:`paramgeom.checkpoints.hub`);
- a ``torch.distributed.checkpoint`` folder (``.metadata`` + ``*.distcp``: FSDP2, torchtitan,
  Megatron-Core ``torch_dist``), its metadata read without unpickling arbitrary objects and
  each tensor assembled from its chunks when read (:mod:`paramgeom.checkpoints.dcp`);
  optimizer state and other non-model keys are skipped and listed (:attr:`Checkpoint.skipped`);
- verl's FSDP checkpoint (``model_world_size_W_rank_R.pt`` per rank, in the folder or its
  ``actor/``): DTensor shards reassembled, read without admitting DTensor's classes
  (:mod:`paramgeom.checkpoints.verl`);
- a torch state dict file ``.pt`` / ``.pth`` / ``.bin``, unpickled only by torch's
  ``weights_only`` unpickler (arbitrary objects are never unpickled): for the zip format
  that ``torch.save`` has written since torch 1.6 its structure is read at open and every
  storage record checked against the file (:mod:`paramgeom.checkpoints.torch_zip`), and
  each tensor is read when asked for by positioned reads; legacy non-zip files are loaded
  whole by ``torch.load(weights_only=True)``. ``{"state_dict": {...}}``, ``{"model":
  {...}}``, ``{"module": {...}}`` and ``{"model_state_dict": {...}}`` are unwrapped one level
  when the top level holds no tensors; non-tensor values are ignored.

Every safetensors header is validated (:func:`read_header`) and every index entry checked
when the checkpoint is opened, before any tensor is read; every input file is opened as a
regular file without blocking (:mod:`paramgeom.checkpoints.files`: a FIFO is refused, never
waited on). Safetensors data are read by positioned reads into private memory or, for the
engine's zero-copy reads (``copy=False``), through a guarded copy-on-write mapping of just
that tensor's bytes.

A memory-mapped page of a file truncated after it was mapped raises SIGBUS, which would kill
the process; the guarded mappings (``paramgeom._C.map_file_range``) turn such a fault into
a zero page and count it (:func:`mapped_fault_count`), and every read first checks that the
file's size, modification time, status-change time and inode are those seen when the
checkpoint was opened, raising :class:`CheckpointError` otherwise; :meth:`Checkpoint.verify`
makes the same check after a computation, so figures from a file that changed under the run
are never kept. With ``copy=True`` (the default) the data is copied into private memory at
once, so a returned tensor never faults later and never aliases another. The
``reader="safe_open"`` mode (the ``safetensors`` library's own unguarded mapping) is for
benchmarks only; nothing in the command line uses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import stat
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import torch

from paramgeom.checkpoints import hub
from paramgeom.checkpoints.dcp import METADATA_FILE, chunk_spec, is_dcp_folder, parse_metadata
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular, read_json, read_regular_bytes
from paramgeom.checkpoints.safetensors_header import read_header
from paramgeom.checkpoints.torch_zip import TensorSpec, TorchZip, read_tensor, read_tensor_into
from paramgeom.checkpoints.verl import open_shards, shard_files

__all__ = [
    "Checkpoint",
    "FileIdentity",
    "TensorInfo",
    "mapped_fault_count",
    "open_checkpoint",
]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_UNWRAP_KEYS = ("state_dict", "model", "module", "model_state_dict")


@dataclass(frozen=True)
class FileIdentity:
    """Identity of one source file, for the resume journal."""

    path: str
    """Resolved absolute path."""
    size: int
    mtime_ns: int
    header_sha256: str
    """sha256 of the safetensors header bytes; for torch state dicts, of the whole file."""

    def key(self) -> str:
        """A stable string combining all four fields."""
        return json.dumps(
            [self.path, self.size, self.mtime_ns, self.header_sha256], separators=(",", ":")
        )


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of a checkpoint: where it lives and what it is, without its data."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


# --------------------------------------------------------------------------- data files


def _guarded_mapper():
    """``paramgeom._C`` when it can make guarded mappings, else None (reads then copy)."""
    from paramgeom import _native

    kernels, _ = _native.load("_C")
    return kernels if kernels is not None and hasattr(kernels, "map_file_range") else None


def mapped_fault_count() -> int:
    """Page faults in guarded mappings turned into zero pages so far in this process (a
    file shrank under a zero-copy read); 0 without the native extension."""
    kernels = _guarded_mapper()
    return int(kernels.mapped_fault_count()) if kernels is not None else 0


class _Source:
    """One data file of a checkpoint."""

    file: Path
    tensors: dict[str, TensorInfo]

    def __init__(
        self, file: Path, size: int, mtime_ns: int, ctime_ns: int | None = None,
        inode: int | None = None,
    ) -> None:  # fmt: skip
        self.file = file
        self._size = size
        self._mtime_ns = mtime_ns
        self._ctime_ns = ctime_ns
        self._inode = inode
        self._identity: FileIdentity | None = None
        self._lock = threading.Lock()
        self._closed = False

    def check_unchanged(self, tensor: str | None) -> None:
        """Refuse to touch a file that changed since it was opened (mmap + truncation = SIGBUS)."""
        if self._closed:
            raise ValueError(f"{self.file}: checkpoint is closed")
        try:
            st = os.stat(self.file)
        except OSError as exc:
            raise CheckpointError(
                self.file, tensor, f"cannot read file: {exc.strerror or exc}"
            ) from exc
        # ctime and the inode catch what size and mtime can miss: a same-size rewrite whose
        # mtime was set back with utime (ctime cannot be), or a file replaced by rename.
        changed = [
            f"{what} {was} -> {now}"
            for what, was, now in (
                ("size", self._size, st.st_size),
                ("mtime_ns", self._mtime_ns, st.st_mtime_ns),
                ("ctime_ns", self._ctime_ns, st.st_ctime_ns),
                ("inode", self._inode, st.st_ino),
            )
            if was is not None and was != now
        ]
        if changed:
            raise CheckpointError(
                self.file, tensor,
                f"file changed since the checkpoint was opened ({', '.join(changed)}): "
                "figures read from it are not kept",
            )  # fmt: skip

    def _header_digest(self) -> str:
        raise NotImplementedError

    def identity(self) -> FileIdentity:
        self.check_unchanged(None)
        if self._identity is None:
            self._identity = FileIdentity(
                path=str(self.file.resolve()),
                size=self._size,
                mtime_ns=self._mtime_ns,
                header_sha256=self._header_digest(),
            )
        return self._identity

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True


class _SafetensorsSource(_Source):
    def __init__(self, file: Path) -> None:
        header = read_header(file)
        super().__init__(file, header.file_size, header.mtime_ns, header.ctime_ns, header.inode)
        self.header = header
        self.tensors = {
            name: TensorInfo(name, file, spec.dtype, spec.shape, spec.nbytes)
            for name, spec in header.entries.items()
        }
        self._handle = None
        self.mode = "map"

    @property
    def private_reads(self) -> bool:
        return self.mode in ("map", "pread")

    def _fetch(self, copy: bool):
        return self._map if self.mode == "map" and not copy else self._pread

    def _header_digest(self) -> str:
        return self.header.sha256

    def _pread(self, name: str, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` at ``offset`` of the data region of tensor ``name``, into new memory.

        Plain ``pread`` calls into a private buffer: the same bytes the mmap path copies,
        without mapping the file, so the pages read are not charged to this process's
        resident set after the copy (the mmap path keeps every page it touched mapped, and
        resident, until the file is closed: whole shards for a whole-model diff).
        """
        buf = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        start = self.header.entries[name].file_offset + offset
        done = 0
        with open_regular(self.file, name) as fh:
            fd = fh.fileno()
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], start + done)
                if n <= 0:
                    raise CheckpointError(
                        self.file, name, f"file ends {nbytes - done} bytes into the tensor data"
                    )
                done += n
        return buf

    def _map(self, name: str, offset: int, nbytes: int) -> torch.Tensor:
        """Zero-copy view of ``nbytes`` at ``offset`` of tensor ``name``'s data: a private
        (copy-on-write) mapping of that byte range, read ahead by the kernel from the
        calling thread (``MADV_WILLNEED``: the prefetch thread), and guarded
        (``paramgeom._C.map_file_range``): should the file shrink while the view lives, the
        pages past its end read as zeros and are counted instead of killing the process
        with SIGBUS; the engine checks the file and that count after computing on the view
        (:class:`~paramgeom.engine.loader.InputWatch`). The mapping lives exactly as long
        as the returned tensor, so resident memory is bounded by the tensors in flight and
        no bytes are copied. Falls back to :meth:`_pread` where no guarded mapping can be
        made (no native extension, misaligned data, every guard slot taken)."""
        start = self.header.entries[name].file_offset + offset
        kernels = _guarded_mapper()
        if nbytes == 0 or start % 8 or kernels is None:
            return self._pread(name, offset, nbytes)  # nothing to map, misaligned, or no guard
        # Private and writable: an in-place write by the caller copies the page (never the
        # file, never a crash on a read-only page). No MAP_POPULATE: prefaulting a private
        # writable mapping measured 3.5 GB/s against 4.2 GB/s for faulting in the kernels.
        with open_regular(self.file, name) as fh:
            try:
                view = kernels.map_file_range(fh.fileno(), start, nbytes)
            except OSError:
                return self._pread(name, offset, nbytes)
        return torch.from_numpy(view)

    def _typed(self, buf: torch.Tensor, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        dtype = self.tensors[name].dtype
        if buf.numel() == 0:
            return torch.empty(shape, dtype=dtype)
        return buf.view(dtype).reshape(shape)

    def _open(self):
        with self._lock:
            if self._closed:
                raise ValueError(f"{self.file}: checkpoint is closed")
            if self._handle is None:
                from safetensors import safe_open

                try:
                    self._handle = safe_open(str(self.file), framework="pt", device="cpu")
                except Exception as exc:
                    raise CheckpointError(
                        self.file, None, f"safetensors cannot open the file: {exc}"
                    ) from exc
            return self._handle

    def get(self, name: str, copy: bool = True) -> torch.Tensor:
        if self.mode in ("map", "pread"):
            info = self.tensors[name]
            return self._typed(self._fetch(copy)(name, 0, info.nbytes), name, info.shape)
        return self._open().get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int, copy: bool = True) -> torch.Tensor:
        if self.mode in ("map", "pread"):
            info = self.tensors[name]
            row = info.nbytes // info.shape[0] if info.shape[0] else 0
            shape = (stop - start, *info.shape[1:])
            fetch = self._fetch(copy)
            return self._typed(fetch(name, start * row, (stop - start) * row), name, shape)
        return self._open().get_slice(name)[start:stop]

    def close(self) -> None:
        with self._lock:
            super().close()
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.__exit__(None, None, None)


def _refusal_detail(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln[:300]
    return (lines[-1] if lines else type(exc).__name__)[:300]


class _TorchSource(_Source):
    """A torch state dict file; no tensor data is ever memory-mapped (a mapped page of a
    file that shrank kills the process with SIGBUS).

    Zip format (``torch.save`` since torch 1.6): the structure is read at open by
    :class:`~paramgeom.checkpoints.torch_zip.TorchZip` (``weights_only`` unpickler, meta
    tensors, every storage record checked against the file), and each tensor or row block is
    read when asked for, by positioned reads into private memory
    (:func:`~paramgeom.checkpoints.torch_zip.read_tensor`): the state dict is never held
    whole. Legacy non-zip files are loaded whole by ``torch.load(weights_only=True)``.
    """

    def __init__(self, file: Path) -> None:
        self._specs: dict[str, TensorSpec] = {}  # zip files: what each read needs
        self._data: dict[str, torch.Tensor] = {}  # legacy files: the tensors themselves
        self._byteswap = False
        with open_regular(file) as fh:
            try:
                st = os.fstat(fh.fileno())
                super().__init__(file, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                obj, structure = self._load(fh, st.st_size)
            except CheckpointError:
                raise
            except pickle.UnpicklingError as exc:
                raise CheckpointError(
                    file,
                    None,
                    "torch.load(weights_only=True) refused the file: it holds objects other "
                    f"than tensors and plain containers ({_refusal_detail(exc)}); paramgeom "
                    "never unpickles arbitrary objects",
                ) from exc
            except OSError as exc:
                raise CheckpointError(
                    file, None, f"cannot read file: {exc.strerror or exc}"
                ) from exc
            except Exception as exc:
                raise CheckpointError(
                    file,
                    None,
                    "not a readable torch state dict (corrupt, or not written by torch.save: "
                    f"{type(exc).__name__}: {_refusal_detail(exc)})",
                ) from exc
        found = self._state_dict(obj)
        if structure is not None:  # dropped after this: only the specs are kept
            self._specs = {name: structure.spec(name, t) for name, t in found.items()}
            self._byteswap = structure.byteswap
        else:
            for name, t in found.items():
                if t.device.type == "meta":
                    raise CheckpointError(
                        file, name, "tensor is on the meta device: the file holds no data for it"
                    )
            self._data = found
        self.tensors = {
            name: TensorInfo(name, file, t.dtype, tuple(t.shape), t.numel() * t.element_size())
            for name, t in found.items()
        }
        self.check_unchanged(None)  # what was read is the file whose identity was taken

    def _load(self, fh, size: int) -> tuple[object, TorchZip | None]:
        """The unpickled object, and for zip files the structure its meta tensors belong to."""
        zipped = zipfile.is_zipfile(fh)
        fh.seek(0)
        if zipped:
            structure = TorchZip(self.file, fh, size)
            return structure.obj, structure
        # Legacy format: tensor data are inline in the pickle stream, so torch.load reads
        # them into memory (no mapping, no SIGBUS risk); still weights_only.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(fh, map_location="cpu", weights_only=True, mmap=False), None

    @property
    def private_reads(self) -> bool:
        """True for zip files: :meth:`get` and :meth:`get_rows` return new memory already."""
        return bool(self._specs)

    def _state_dict(self, obj: object) -> dict[str, torch.Tensor]:
        if not isinstance(obj, dict):
            raise CheckpointError(
                self.file, None, f"expected a dict of tensors, found {type(obj).__name__}"
            )

        def tensors_of(d: dict) -> dict[str, torch.Tensor]:
            return {
                k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
            }

        found = tensors_of(obj)
        if not found:
            for key in _UNWRAP_KEYS:
                sub = obj.get(key)
                if isinstance(sub, dict):
                    found = tensors_of(sub)
                    if found:
                        break
        if not found:
            raise CheckpointError(
                self.file,
                None,
                "no tensors found (looked at the top level and under "
                + ", ".join(repr(k) for k in _UNWRAP_KEYS)
                + ")",
            )
        for name, t in found.items():
            if t.layout != torch.strided:
                raise CheckpointError(self.file, name, f"unsupported tensor layout {t.layout}")
        return found

    def _header_digest(self) -> str:
        h = hashlib.sha256()
        try:
            with open(self.file, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            raise CheckpointError(
                self.file, None, f"cannot read file: {exc.strerror or exc}"
            ) from exc
        return h.hexdigest()

    def _read(self, name: str, rows: tuple[int, int] | None) -> torch.Tensor:
        out = read_tensor(self.file, self._specs[name], rows, self._byteswap)
        # A file rewritten during the read may have given bytes of two versions: refuse.
        self.check_unchanged(name)
        return out

    def get(self, name: str, copy: bool = True) -> torch.Tensor:
        if self._specs:  # ``copy`` does not matter: every read is new memory
            return self._read(name, None)
        return self._data[name]

    def get_rows(self, name: str, start: int, stop: int, copy: bool = True) -> torch.Tensor:
        if self._specs:
            return self._read(name, (start, stop))
        return self._data[name][start:stop]

    def close(self) -> None:
        super().close()
        self._data = {}


class _ChunkedSource(_Source):
    """A checkpoint whose tensors are assembled from pieces in several data files (DCP,
    verl): ``file`` is the file that describes them; each data file is checked for change
    like ``file`` (size, mtime, ctime, inode). Every read assembles new memory, one tensor
    (or row block) at a time; a row block reads only the rows of each piece inside it."""

    private_reads = True

    def _watch(self, files) -> None:
        self._data: dict[Path, _Source] = {}
        for f in files:
            fst = _stat_regular(f)
            self._data[f] = _Source(f, fst.st_size, fst.st_mtime_ns, fst.st_ctime_ns, fst.st_ino)

    def _pieces(self, name: str) -> list[tuple[tuple[int, ...], tuple[int, ...], Path]]:
        """(offsets, sizes, data file) of each piece of tensor ``name``."""
        raise NotImplementedError

    def _piece_spec(self, name: str, i: int) -> tuple[TensorSpec, bool]:
        """The checked storage of piece ``i`` of ``name`` and whether to byteswap it."""
        raise NotImplementedError

    def check_unchanged(self, tensor: str | None) -> None:
        super().check_unchanged(tensor)
        files = self._data if tensor is None else {f for _, _, f in self._pieces(tensor)}
        for f in files:
            self._data[f].check_unchanged(tensor)

    # Whether the describing file's bytes go into the digest (a DCP .metadata: small); a
    # verl rank file is a data file, covered like the others by name, size and mtime.
    _digest_description = True

    def _header_digest(self) -> str:
        """sha256 of the describing file and of each data file's name, size and mtime: a
        journal entry keyed by it is recomputed when any of them changes."""
        h = hashlib.sha256()
        if self._digest_description:
            h.update(read_regular_bytes(self.file, 1 << 31, "checkpoint description"))
        for f, src in sorted(self._data.items()):
            h.update(f"\0{f.name}\0{src._size}\0{src._mtime_ns}".encode())
        return h.hexdigest()

    def _assemble(self, name: str, start: int | None, stop: int | None) -> torch.Tensor:
        info = self.tensors[name]
        shape = list(info.shape)
        if start is not None:
            shape[0] = stop - start
        out = torch.empty(shape, dtype=info.dtype)
        for i, (offsets, sizes, file) in enumerate(self._pieces(name)):
            if math.prod(sizes) == 0:
                continue
            box = [slice(o, o + n) for o, n in zip(offsets, sizes, strict=True)]
            rows = None
            if start is not None:
                lo, hi = max(start, offsets[0]), min(stop, offsets[0] + sizes[0])
                if lo >= hi:
                    continue
                rows = (lo - offsets[0], hi - offsets[0])
                box[0] = slice(lo - start, hi - start)
            spec, byteswap = self._piece_spec(name, i)
            dest = out[tuple(box)]
            # A row-block piece (full trailing dims) is a contiguous block of ``out``: read
            # into it directly; other pieces through a buffer.
            if byteswap or not read_tensor_into(file, spec, dest, rows):
                dest.copy_(read_tensor(file, spec, rows, byteswap))
        # A file rewritten during the read may have given bytes of two versions: refuse.
        self.check_unchanged(name)
        return out

    def get(self, name: str, copy: bool = True) -> torch.Tensor:
        return self._assemble(name, None, None)

    def get_rows(self, name: str, start: int, stop: int, copy: bool = True) -> torch.Tensor:
        return self._assemble(name, start, stop)


class _DcpSource(_ChunkedSource):
    """A ``torch.distributed.checkpoint`` folder: ``file`` is its ``.metadata``; each
    chunk's archive is parsed and checked when its tensor is first read."""

    def __init__(self, folder: Path) -> None:
        meta = folder / METADATA_FILE
        st = _stat_regular(meta)
        super().__init__(meta, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        self.layout = parse_metadata(folder)
        self._watch(self.layout.files)
        self._specs: dict[tuple[str, int], tuple[TensorSpec, bool]] = {}
        self.tensors = {
            name: TensorInfo(name, meta, t.dtype, t.shape, t.nbytes)
            for name, t in self.layout.tensors.items()
        }
        self.skipped = dict(self.layout.skipped)
        self.check_unchanged(None)  # the metadata read is the file whose identity was taken

    def _pieces(self, name: str):
        return [(c.offsets, c.sizes, c.file) for c in self.layout.tensors[name].chunks]

    def _piece_spec(self, name: str, i: int) -> tuple[TensorSpec, bool]:
        key = (name, i)
        with self._lock:
            found = self._specs.get(key)
        if found is None:
            t = self.layout.tensors[name]
            found = chunk_spec(t.chunks[i], t)
            with self._lock:
                self._specs[key] = found
        return found


class _VerlSource(_ChunkedSource):
    """verl's FSDP shards (``model_world_size_W_rank_R.pt``): ``file`` is rank 0's file;
    every rank file's structure is read and checked at open."""

    _digest_description = False

    def __init__(self, files: dict[int, Path]) -> None:
        first = files[0]
        st = _stat_regular(first)
        super().__init__(first, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        self._watch(files.values())
        self.layout = open_shards(files)
        self.tensors = {
            name: TensorInfo(name, first, t.dtype, t.shape, t.nbytes)
            for name, t in self.layout.items()
        }
        self.check_unchanged(None)

    def _pieces(self, name: str):
        return [(p.offsets, p.sizes, p.file) for p in self.layout[name].pieces]

    def _piece_spec(self, name: str, i: int) -> tuple[TensorSpec, bool]:
        piece = self.layout[name].pieces[i]
        return piece.spec, piece.byteswap


def _stat_regular(path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CheckpointError(path, None, f"cannot read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, None, "not a regular file")
    return st


def _open_source(file: Path) -> _Source:
    if file.name.endswith(".safetensors"):
        return _SafetensorsSource(file)
    if file.name.endswith(_TORCH_SUFFIXES):
        return _TorchSource(file)
    raise CheckpointError(
        file, None, "unknown checkpoint format (expected .safetensors, .pt, .pth or .bin)"
    )


# --------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """A checkpoint opened for reading: its files, its tensors and how to read them.

    Build one with :func:`open_checkpoint`. Thread-safe for concurrent reads (a prefetch
    thread may read the next tensor while the current one is computed).
    """

    path: Path
    """What the user gave."""
    files: list[Path]
    """Data files in shard order (sorted by file name, which is the shard order of
    ``model-0000i-of-0000N`` names)."""
    tensors: dict[str, TensorInfo]
    """All tensors, ordered by shard order then offset in the file."""
    skipped: dict[str, str]
    """Keys of the checkpoint that are not read as model tensors, with why (a DCP folder's
    optimizer state and non-tensor entries)."""

    def __init__(
        self, path: Path, sources: list[_Source], selection: dict[Path, list[str]] | None = None
    ) -> None:
        self.path = path
        self._sources = {s.file: s for s in sources}
        self.files = [s.file for s in sources]
        self.tensors = {}
        self.skipped = {}
        self._by_name: dict[str, _Source] = {}
        for s in sources:
            wanted = None if selection is None else set(selection[s.file])
            for name, info in s.tensors.items():
                if wanted is not None and name not in wanted:
                    continue
                if name in self.tensors:
                    raise CheckpointError(
                        s.file, name, f"tensor also stored in {self.tensors[name].file}"
                    )
                self.tensors[name] = info
                self._by_name[name] = s
            self.skipped.update(getattr(s, "skipped", {}))
        self._config: dict | None = None

    # ---------------------------------------------------------------- helpers
    def __repr__(self) -> str:
        n_files, n_tensors = len(self.files), len(self.tensors)
        return f"Checkpoint({str(self.path)!r}, files={n_files}, tensors={n_tensors})"

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def folder(self) -> Path:
        """The folder holding the data files."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def config(self) -> dict | None:
        """``config.json`` beside the data files, if there is a readable one; else None."""
        if self._config is None:
            path = self.folder / "config.json"
            try:
                cfg = read_json(path, "config.json", limit=1 << 24) if path.exists() else {}
                self._config = cfg if isinstance(cfg, dict) else {}
            except (OSError, CheckpointError):
                self._config = {}
        return self._config or None

    def _sources_for_reader(self) -> list[_SafetensorsSource]:
        return [s for s in self._sources.values() if isinstance(s, _SafetensorsSource)]

    def _source(self, name: str) -> _Source:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    # ---------------------------------------------------------------- API
    def advise(self, name: str) -> None:
        """Hint that tensor ``name`` will be read soon: the kernel starts reading it into the
        page cache in the background (``POSIX_FADV_WILLNEED``; charged to no process's
        resident memory). A no-op for torch state dicts and where unsupported."""
        src = self._source(name)
        if not isinstance(src, _SafetensorsSource) or not hasattr(os, "posix_fadvise"):
            return
        spec = src.header.entries[name]
        try:
            fd = os.open(src.file, os.O_RDONLY)
        except OSError:
            return  # the read itself will report it
        try:
            os.posix_fadvise(fd, spec.file_offset, spec.nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def identity(self, file: str | Path) -> FileIdentity:
        """Identity of one of :attr:`files` (as seen when the checkpoint was opened).

        Raises :class:`CheckpointError` if the file has changed since then.
        """
        try:
            src = self._sources[Path(file)]
        except KeyError:
            raise KeyError(f"{file} is not a data file of {self.path}") from None
        return src.identity()

    def verify(self, names) -> None:
        """Raise :class:`CheckpointError` if a file holding any of the tensors ``names``
        changed since the checkpoint was opened (size, mtime, ctime, inode): what was
        computed from those tensors must not be kept. The engine calls it after computing
        on each unit, with :func:`mapped_fault_count` for zero-copy reads."""
        files = {self._source(n).file: n for n in names}
        for file, name in files.items():
            self._sources[file].check_unchanged(name)

    def read(self, name: str, *, copy: bool = True) -> torch.Tensor:
        """The whole tensor ``name``: CPU, contiguous, in its stored dtype.

        ``copy=False`` returns a read-only view of the memory-mapped file where possible
        (no copy; do not modify it in place, and repeated reads may share memory).
        """
        src = self._source(name)
        src.check_unchanged(name)
        try:
            if getattr(src, "private_reads", False):
                return src.get(name, copy)
            t = src.get(name)
            return t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(src.file, name, f"read failed: {exc}") from exc

    def read_rows(self, name: str, start: int, stop: int, *, copy: bool = True) -> torch.Tensor:
        """Rows ``[start, stop)`` along dim 0 (row-block streaming); 1-D tensors work too.

        Requires ``0 <= start <= stop <= shape[0]`` (ValueError otherwise, and for 0-d).
        """
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor named {name!r}")
        if not info.shape:
            raise ValueError(f"{name}: read_rows needs at least one dimension (tensor is 0-d)")
        if not (0 <= start <= stop <= info.shape[0]):
            raise ValueError(
                f"{name}: rows [{start}, {stop}) out of range for {info.shape[0]} rows"
            )
        src = self._source(name)
        src.check_unchanged(name)
        try:
            if getattr(src, "private_reads", False):
                return src.get_rows(name, start, stop, copy)
            t = src.get_rows(name, start, stop)
            return t.clone(memory_format=torch.contiguous_format) if copy else t.contiguous()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(src.file, name, f"read failed: {exc}") from exc

    def close(self) -> None:
        """Close every open file handle. Reads after close raise ValueError."""
        for s in self._sources.values():
            s.close()


# --------------------------------------------------------------------------- opening


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _hf_cache_blob(root: Path, target: Path) -> bool:
    """True for a Hugging Face cache snapshot file: ``models--X/snapshots/REV/f -> ../../blobs``."""
    snapshots = root.parent
    repo = snapshots.parent
    return (
        snapshots.name == "snapshots"
        and repo.name.startswith("models--")
        and target.is_relative_to(repo / "blobs")
    )


def _shard_path(folder: Path, index: Path, shard: object, tensor: str) -> Path:
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        raise CheckpointError(index, tensor, f"bad shard path {shard!r}")
    posix = shard.replace("\\", "/")
    win = PureWindowsPath(shard)
    if posix.startswith("/") or win.is_absolute() or win.drive:
        raise CheckpointError(
            index, tensor, f"shard path escapes the checkpoint folder: absolute path {shard!r}"
        )
    if ".." in posix.split("/"):
        raise CheckpointError(
            index, tensor, f"shard path escapes the checkpoint folder: {shard!r} contains '..'"
        )
    target = folder / os.path.normpath(posix)
    try:
        root = folder.resolve()
        resolved = target.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise CheckpointError(index, tensor, f"bad shard path {shard!r}: {exc}") from None
    if not resolved.is_relative_to(root) and not _hf_cache_blob(root, resolved):
        raise CheckpointError(
            index,
            tensor,
            f"shard path escapes the checkpoint folder: {shard!r} resolves to {resolved}",
        )
    return target


def _open_index(path: Path, index: Path) -> Checkpoint:
    folder = index.parent
    obj = read_json(index, "index JSON")  # a duplicate weight_map key is refused, not last-wins
    weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(index, None, "index has no 'weight_map' object")
    if not weight_map:
        raise CheckpointError(index, None, "index 'weight_map' is empty")

    by_shard: dict[Path, list[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(_shard_path(folder, index, shard, tensor), []).append(tensor)

    sources: list[_Source] = []
    for shard in sorted(by_shard, key=_natural_key):
        names = by_shard[shard]
        try:
            st = os.stat(shard)
        except FileNotFoundError:
            raise CheckpointError(
                shard, names[0], f"shard file is missing (listed in {index.name})"
            ) from None
        except OSError as exc:  # a name too long, a symlink loop, no permission, ...
            raise CheckpointError(
                shard, names[0], f"cannot read shard (listed in {index.name}): "
                f"{exc.strerror or exc}",
            ) from None  # fmt: skip
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(shard, names[0], f"shard is not a file (listed in {index.name})")
        src = _open_source(shard)
        for name in names:
            if name not in src.tensors:
                raise CheckpointError(
                    shard, name, f"tensor listed in {index.name} is not in this shard"
                )
        sources.append(src)
    return Checkpoint(path, sources, by_shard)


def _open_folder(folder: Path) -> Checkpoint:
    def one(pattern: str) -> list[Path]:
        return sorted(p for p in folder.glob(pattern) if p.is_file())

    if is_dcp_folder(folder):
        return Checkpoint(folder, [_DcpSource(folder)])
    for place in (folder, folder / "actor"):  # verl: global_step_N/actor/model_world_size_*
        shards = shard_files(place) if place.is_dir() else None
        if shards is not None:
            return Checkpoint(folder, [_VerlSource(shards)])

    for name in ("model.safetensors.index.json",):
        if (folder / name).is_file():
            return _open_index(folder, folder / name)
    if (folder / "model.safetensors").is_file():
        return Checkpoint(folder, [_open_source(folder / "model.safetensors")])
    st_files = one("*.safetensors")
    st_indexes = one("*.safetensors.index.json")
    if len(st_files) == 1 and not st_indexes:
        return Checkpoint(folder, [_open_source(st_files[0])])
    if len(st_indexes) == 1:
        return _open_index(folder, st_indexes[0])
    if st_files or st_indexes:
        raise CheckpointError(
            folder,
            None,
            f"ambiguous checkpoint folder: {len(st_files)} .safetensors files and "
            f"{len(st_indexes)} index files (expected model.safetensors.index.json)",
        )
    if (folder / "pytorch_model.bin.index.json").is_file():
        return _open_index(folder, folder / "pytorch_model.bin.index.json")
    if (folder / "pytorch_model.bin").is_file():
        return Checkpoint(folder, [_open_source(folder / "pytorch_model.bin")])
    torch_files = [p for p in one("*") if p.name.endswith(_TORCH_SUFFIXES)]
    if len(torch_files) == 1:
        return Checkpoint(folder, [_open_source(torch_files[0])])
    raise CheckpointError(
        folder,
        None,
        "no checkpoint found in folder (expected model.safetensors, "
        "model.safetensors.index.json, one *.safetensors file or pytorch_model.bin)"
        if not torch_files
        else f"ambiguous checkpoint folder: {len(torch_files)} torch state dict files",
    )


READERS = ("map", "pread", "safe_open")


def open_checkpoint(path: str | Path, reader: str = "map") -> Checkpoint:
    """Open a checkpoint (see the module docstring for the accepted layouts).

    Validates every header and index entry before returning; raises
    :class:`CheckpointError` for a missing path, an unreadable file or an unknown format.
    ``reader`` picks how safetensors data are read, all three from the same validated byte
    ranges and giving the same tensors. With ``read(..., copy=True)`` (the default) the
    first two copy into a private buffer by positioned reads; with ``copy=False``,
    ``"map"`` (default) maps just that tensor's byte range, copy-on-write, for as long as
    the tensor lives (zero-copy: what the diff engine uses) and ``"pread"`` still copies;
    ``"safe_open"`` uses the ``safetensors`` library's mmap (one mapping per file: every
    page touched stays resident until :meth:`Checkpoint.close`, whole shards for a
    whole-model diff). benchmarks/RESULTS.md has the speed and memory of each.
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    ckpt = _open_checkpoint(path)
    for src in ckpt._sources_for_reader():
        src.mode = reader
    return ckpt


def _open_checkpoint(path: str | Path) -> Checkpoint:
    p = Path(path).expanduser()
    try:
        exists = p.exists()
    except OSError as exc:
        raise CheckpointError(p, None, f"cannot access: {exc.strerror or exc}") from exc
    if not exists:
        if not hub.is_repo_id(str(path)):
            raise CheckpointError(p, None, "no such file or directory")
        p = hub.resolve(str(path))  # org/name[@revision]: the Hugging Face snapshot folder
    if p.is_dir():
        return _open_folder(p)
    if p.name.endswith(".index.json"):
        return _open_index(p, p)
    return Checkpoint(p, [_open_source(p)])
