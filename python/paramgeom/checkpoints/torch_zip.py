"""Read a zip-format torch state dict without mapping it (DESIGN.md "Reliability contract").

``torch.save`` has written a zip archive since torch 1.6: ``<archive>/data.pkl`` (the pickled
object, whose tensors name their storages by key), one *stored* (uncompressed) record
``<archive>/data/<key>`` per storage holding its raw bytes, and ``<archive>/byteorder``.

:class:`TorchZip` opens such a file in two steps and reads no tensor data:

1. the zip directory (Python's :mod:`zipfile`) and each record's local header give every
   record's absolute data offset and size; compressed or encrypted records, duplicate names
   and records whose data lie outside the file are refused;
2. ``data.pkl`` is unpickled by torch's own ``weights_only`` unpickler (arbitrary objects
   stay refused) with a ``persistent_load`` that records each storage's key, dtype and
   declared size and hands back an empty *meta-device* storage, so every tensor comes out
   as a meta tensor carrying only dtype, shape, stride and storage offset.

:meth:`TorchZip.spec` then checks one tensor against the file (its storage record holds the
storage's declared bytes, its view lies inside the storage, it is not a meta tensor of the
file itself) and returns a :class:`TensorSpec`; :func:`read_tensor` reads a tensor, or a block
of its rows, by positioned reads (``os.preadv``) into new private memory.

Why not ``torch.load(mmap=True)``: it maps the whole file, so a page touched after the file
shrank kills the process with SIGBUS, and it skips the check that a storage record is as
long as its storage (a short record silently reads the neighbouring zip bytes). Why not
``map_location="meta"``: a tensor saved on the meta device would look the same as one with
data, and the record offsets would come from a second zip parser (torch's) that need not
agree with the one checked here. The unpickler class is torch's private
``torch._weights_only_unpickler.Unpickler``, whose ``persistent_load`` protocol is the one
``torch.load`` itself uses and has not changed from torch 2.4 to 2.13.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch._weights_only_unpickler import Unpickler as WeightsOnlyUnpickler

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular

__all__ = ["TensorSpec", "TorchZip", "read_tensor", "read_tensor_into"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra-field lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_META_STORAGE_BYTES = 1 << 62
"""Size of the meta storage handed to the unpickler for every storage: larger than any
view, so torch's own bounds check in ``set_`` never fires first, and the declared size is
checked per tensor by :meth:`TorchZip.spec`, where the error can name the tensor."""
_SMALL_RECORD_LIMIT = 4096  # byteorder and friends: a few bytes each


@dataclass(frozen=True)
class ZipRecord:
    """A stored (uncompressed) zip member: where its bytes lie in the file."""

    name: str
    data_offset: int
    """Absolute offset of the record's first data byte in the file."""
    size: int


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of the file, checked against it: everything needed to read it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    """In elements; never negative."""
    storage_offset: int
    """Offset of element 0 from the start of the storage, in elements of ``dtype``."""
    data_offset: int
    """Absolute file offset of the storage's first byte."""
    storage_key: str
    storage_nbytes: int
    """Bytes the pickle declares for the storage (its record holds at least these)."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass
class _Storage:
    key: str
    dtype: torch.dtype
    nbytes: int
    meta: torch.storage.TypedStorage


def _text(x: object) -> str | None:
    if isinstance(x, bytes):  # pickles written by Python 2 torch
        try:
            return x.decode("ascii")
        except UnicodeDecodeError:
            return None
    return x if isinstance(x, str) else None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def pread_into(fh: BinaryIO, buf: torch.Tensor, offset: int) -> int:
    """Fill the uint8 tensor ``buf`` from ``fh`` at ``offset``; return how many bytes are
    missing (0 unless the file ends first). A read past the end is a short read, never a
    fault, whatever happened to the file since it was opened."""
    view = memoryview(buf.numpy())
    fd, done, want = fh.fileno(), 0, buf.numel()
    while done < want:
        n = os.preadv(fd, [view[done:]], offset + done)  # releases the GIL
        if n <= 0:
            break
        done += n
    return want - done


class _Slice(io.RawIOBase):
    """Bytes ``[base, base + size)`` of an open file as a seekable read-only file of their
    own (positioned reads: the underlying file position is never used). A torch.save
    archive embedded in a bigger file (a DCP ``.distcp`` holds one per tensor chunk) is
    read through it exactly as a file of its own; nothing past ``size`` is visible."""

    def __init__(self, fh: BinaryIO, base: int, size: int) -> None:
        self._fd, self._base, self._size, self._pos = fh.fileno(), base, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if start + offset < 0:
            raise ValueError("negative seek position")
        self._pos = start + offset
        return self._pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self._size - self._pos))
        data = os.pread(self._fd, n, self._base + self._pos) if n else b""
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


class TorchZip:
    """The structure of one zip-format torch checkpoint, read without its tensor data.

    Parameters
    ----------
    file
        The checkpoint's path, for messages.
    fh
        The checkpoint, open for reading (``zipfile.is_zipfile`` is true for it).
    size
        The archive's size (the file's when the checkpoint was opened): records must lie
        inside it.
    base
        Where the archive starts in ``fh`` (0 for a file of its own; a DCP ``.distcp``
        file holds many archives one after another). Offsets in :class:`TensorSpec` are
        absolute file offsets either way.
    unpickler
        Makes the unpickler of ``data.pkl`` from its bytes (default: torch's
        ``weights_only`` one). It must be as restrictive; its ``persistent_load`` is set
        here (meta storages).

    Attributes
    ----------
    obj
        The unpickled object; its tensors are meta tensors (pass them to :meth:`spec`).
    byteswap
        True when the file's ``byteorder`` record is not this machine's.

    Raises :class:`CheckpointError` for a malformed archive, and lets the unpickler's own
    exceptions (``pickle.UnpicklingError`` for a refused global, ...) through for the caller
    to word.
    """

    def __init__(
        self,
        file: Path,
        fh: BinaryIO,
        size: int,
        base: int = 0,
        unpickler: Callable[[BinaryIO], pickle.Unpickler] | None = None,
    ) -> None:
        self.file = file
        self._make_unpickler = unpickler or (lambda f: WeightsOnlyUnpickler(f, encoding="utf-8"))
        self._size = size
        self._base = base
        self._records = self._read_directory(fh)
        # As torch's reader does: the archive folder is that of the first record.
        first = next(iter(self._records), "")
        if "/" not in first:
            raise CheckpointError(file, None, self._unreadable("no archive folder"))
        self._prefix = first.split("/", 1)[0] + "/"
        byteorder = self._small(fh, "byteorder")
        if byteorder is None:
            byteorder = b"little"  # torch.load's default for files without the record
        if byteorder not in (b"little", b"big"):
            raise CheckpointError(
                file, None, self._unreadable(f"unknown byteorder record {byteorder[:16]!r}")
            )
        self.byteswap = byteorder.decode() != sys.byteorder
        pkl = self._record(fh, "data.pkl")
        self._storages: dict[str, _Storage] = {}
        self.obj = self._unpickle(pkl)
        # Kept alive until the caller has matched its tensors: a storage's address is how a
        # tensor is traced back to its key, and a freed one could be reused.
        self._by_address = {s.meta._untyped_storage._cdata: s for s in self._storages.values()}

    # ---------------------------------------------------------------- zip directory
    def _unreadable(self, why: str) -> str:
        return f"not a readable torch state dict (corrupt, or not written by torch.save: {why})"

    def _read_directory(self, fh: BinaryIO) -> dict[str, ZipRecord]:
        try:
            infos = zipfile.ZipFile(_Slice(fh, self._base, self._size)).infolist()
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
            raise CheckpointError(self.file, None, self._unreadable(f"bad zip: {exc}")) from exc
        records: dict[str, ZipRecord] = {}
        for info in infos:
            name = info.filename
            if name in records:  # which one would a reader use? refuse rather than guess
                raise CheckpointError(self.file, None, f"zip holds two records named {name!r}")
            if info.flag_bits & 0x1:
                raise CheckpointError(self.file, None, f"zip record {name!r} is encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    self.file,
                    None,
                    f"zip record {name!r} is compressed (method {info.compress_type}); "
                    "torch.save writes every record uncompressed",
                )
            if info.compress_size != info.file_size:
                raise CheckpointError(
                    self.file, None, self._unreadable(f"zip record {name!r} has two sizes")
                )
            records[name] = ZipRecord(name, self._data_offset(fh, info), info.file_size)
        return records

    def _data_offset(self, fh: BinaryIO, info: zipfile.ZipInfo) -> int:
        """The record's data offset, from its local header (whose extra field, torch's
        alignment padding, differs from the central directory's)."""
        outside = f"zip record {info.filename!r} lies outside the file"
        if not 0 <= info.header_offset < self._size:
            raise CheckpointError(self.file, None, outside)
        header_offset = self._base + info.header_offset
        head = os.pread(fh.fileno(), _LOCAL_HEADER.size, header_offset)
        if len(head) < _LOCAL_HEADER.size:
            raise CheckpointError(self.file, None, f"{outside} (truncated file?)")
        signature, n_name, n_extra = _LOCAL_HEADER.unpack(head)
        raw = os.pread(fh.fileno(), n_name, header_offset + _LOCAL_HEADER.size)
        name = raw.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        if signature != _LOCAL_SIGNATURE or name != info.orig_filename:
            raise CheckpointError(
                self.file, None, self._unreadable(f"bad local header for {info.filename!r}")
            )
        start = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
        if start + info.file_size > self._size:
            raise CheckpointError(
                self.file,
                None,
                f"{outside} (its data end at byte {start + info.file_size}, the "
                f"{'file' if self._base == 0 else 'archive'} has {self._size})",
            )
        return self._base + start

    def _record(self, fh: BinaryIO, name: str) -> bytes:
        rec = self._records.get(self._prefix + name)
        if rec is None:
            raise CheckpointError(self.file, None, self._unreadable(f"no {name} record"))
        buf = torch.empty(rec.size, dtype=torch.uint8)
        if pread_into(fh, buf, rec.data_offset):
            raise CheckpointError(self.file, None, f"file ends inside the {name} record")
        return buf.numpy().tobytes()

    def _small(self, fh: BinaryIO, name: str) -> bytes | None:
        rec = self._records.get(self._prefix + name)
        if rec is None:
            return None
        if rec.size > _SMALL_RECORD_LIMIT:
            raise CheckpointError(self.file, None, self._unreadable(f"{name} record too large"))
        return self._record(fh, name)

    # ---------------------------------------------------------------- pickle
    def _persistent_load(self, pid: object) -> torch.storage.TypedStorage:
        """Stand-in for torch.load's: the same checks and dtype rule, no data read."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and _text(pid[0]) == "storage"):
            raise CheckpointError(
                self.file, None, self._unreadable(f"bad persistent id {str(pid)[:80]}")
            )
        _, storage_type, key, location, numel = pid
        key, location = _text(key), _text(location)
        if storage_type is torch.UntypedStorage:
            dtype = torch.uint8
        else:
            dtype = getattr(storage_type, "dtype", None)
        if (
            key is None
            or location is None
            or not isinstance(dtype, torch.dtype)
            or not isinstance(numel, int)
            or isinstance(numel, bool)
            or numel < 0
        ):
            raise CheckpointError(
                self.file, None, self._unreadable(f"bad storage entry {str(pid)[:80]}")
            )
        nbytes = numel * dtype.itemsize
        seen = self._storages.get(key)
        if seen is None:
            # The location ("cpu", "cuda:0", ...) is ignored: map_location="cpu" semantics.
            meta = torch.UntypedStorage(_META_STORAGE_BYTES, device="meta")
            typed = torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)
            seen = self._storages[key] = _Storage(key, dtype, nbytes, typed)
        elif (seen.dtype, seen.nbytes) != (dtype, nbytes):
            raise CheckpointError(
                self.file,
                None,
                self._unreadable(f"storage {key!r} declared twice with different types"),
            )
        return seen.meta

    def _unpickle(self, pkl: bytes) -> object:
        unpickler = self._make_unpickler(io.BytesIO(pkl))
        unpickler.persistent_load = self._persistent_load
        # Sparse tensors rebuilt here join torch's module-level list that the next
        # torch.load validates; ours are meta placeholders, so take them back out.
        pending = getattr(torch._utils, "_sparse_tensors_to_validate", None)
        before = len(pending) if isinstance(pending, list) else 0
        try:
            return unpickler.load()
        except NotImplementedError as exc:  # (a RuntimeError: first)
            # Quantized and nested tensors cannot be rebuilt without their data.
            raise CheckpointError(
                self.file,
                None,
                "holds a tensor kind paramgeom does not read (quantized or nested tensor?): "
                + _first_line(exc),
            ) from exc
        except (RuntimeError, pickle.UnpicklingError) as exc:
            if _raised_by_unpickler(exc):
                raise pickle.UnpicklingError(str(exc)) from exc  # a refusal, as torch.load says
            raise
        finally:
            if isinstance(pending, list):
                del pending[before:]

    # ---------------------------------------------------------------- tensors
    def spec(self, name: str, t: torch.Tensor) -> TensorSpec:
        """Check the (meta) tensor ``t`` of :attr:`obj` against the file; raise
        :class:`CheckpointError` naming ``name`` unless all of its bytes are in the file."""
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            raise CheckpointError(self.file, name, f"unsupported tensor kind ({t.layout})")
        storage = self._by_address.get(t.untyped_storage()._cdata)
        if storage is None:  # not rebuilt from a storage of the file: no data to read
            if t.device.type == "meta":
                raise CheckpointError(
                    self.file, name, "tensor is on the meta device: the file holds no data for it"
                )
            raise CheckpointError(self.file, name, "tensor is not backed by a storage record")
        shape, stride, offset = tuple(t.shape), tuple(t.stride()), t.storage_offset()
        need = _span_bytes(offset, shape, stride, t.dtype.itemsize)
        if need is None:
            raise CheckpointError(self.file, name, f"negative stride {stride} (corrupt file)")
        if need > storage.nbytes:
            raise CheckpointError(
                self.file,
                name,
                f"tensor view (storage offset {offset}, shape {list(shape)}, stride "
                f"{list(stride)}) needs {need} bytes of its storage, which has "
                f"{storage.nbytes} (corrupt file)",
            )
        record = self._records.get(f"{self._prefix}data/{storage.key}")
        if record is None:
            raise CheckpointError(
                self.file, name, f"no zip record for its storage {storage.key!r} (corrupt file)"
            )
        if record.size < storage.nbytes:
            raise CheckpointError(
                self.file,
                name,
                f"storage record {record.name!r} holds {record.size} bytes, fewer than the "
                f"{storage.nbytes} its storage declares (truncated or corrupt file)",
            )
        return TensorSpec(
            name, t.dtype, shape, stride, offset, record.data_offset, storage.key, storage.nbytes
        )


def _raised_by_unpickler(exc: BaseException) -> bool:
    """True when the weights_only unpickler itself raised ``exc``: it refused the pickle.

    torch <= 2.4 refuses a global with RuntimeError, later versions with UnpicklingError
    (torch.load turns both into UnpicklingError); a RuntimeError raised deeper, inside a
    rebuild function or a torch op, means a corrupt file instead.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (
        tb is not None and tb.tb_frame.f_globals.get("__name__") == WeightsOnlyUnpickler.__module__
    )


def _span_bytes(
    offset: int, shape: tuple[int, ...], stride: tuple[int, ...], size: int
) -> int | None:
    """Bytes from the storage's start to the end of the view's last element (0 for an
    empty view); None for a negative stride or offset, which torch never writes.

    (``set_`` on the meta device already rewrites a negative stride as a contiguous one,
    where the CPU refuses it: such a file is read in-bounds with those strides.)
    """
    if any(s < 0 for s in stride) or offset < 0:
        return None
    if 0 in shape:
        return 0
    return (offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1) * size


def _byteswapped(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``buf`` with each element's bytes reversed (each half for complex dtypes, as
    ``UntypedStorage.byteswap`` does)."""
    unit = dtype.itemsize // 2 if dtype.is_complex else dtype.itemsize
    if unit <= 1:
        return buf
    return buf.view(-1, unit).flip(1).reshape(-1)


def read_tensor(
    file: Path,
    spec: TensorSpec,
    rows: tuple[int, int] | None = None,
    byteswap: bool = False,
) -> torch.Tensor:
    """Tensor ``spec`` (or rows ``[start, stop)`` of dim 0) from ``file``: CPU, contiguous,
    in new memory that aliases nothing.

    Reads only the byte span the (sub-)view covers: exactly its bytes for a contiguous
    tensor or row block; for a strided view (transpose, slice, tied weight) the span from
    its first to its last element, then gathered by ``as_strided(...).contiguous()``.
    Raises :class:`CheckpointError` if the file ends before the span does.
    """
    shape, offset = list(spec.shape), spec.storage_offset
    if rows is not None:
        start, stop = rows
        offset += start * spec.stride[0]
        shape[0] = stop - start
    span = _span_bytes(offset, tuple(shape), spec.stride, spec.dtype.itemsize)
    if not span:
        return torch.empty(shape, dtype=spec.dtype)
    span -= offset * spec.dtype.itemsize
    buf = torch.empty(span, dtype=torch.uint8)
    _read_exactly(file, spec, buf, offset)
    if byteswap:
        buf = _byteswapped(buf, spec.dtype)
    out = buf.view(spec.dtype).as_strided(shape, spec.stride)
    return out if out.is_contiguous() else out.contiguous()


def read_tensor_into(
    file: Path, spec: TensorSpec, out: torch.Tensor, rows: tuple[int, int] | None = None
) -> bool:
    """Read tensor ``spec`` (or rows ``[start, stop)`` of dim 0) straight into ``out``, a
    contiguous tensor of that shape and dtype (a block of a bigger tensor being assembled),
    when the stored view is contiguous and needs no byte swap: one positioned read, no
    intermediate buffer. Returns False (nothing read) otherwise: then use
    :func:`read_tensor`. Raises :class:`CheckpointError` if the file ends first."""
    shape = list(spec.shape)
    offset = spec.storage_offset
    if rows is not None:
        offset += rows[0] * (spec.stride[0] if spec.stride else 0)
        shape[0] = rows[1] - rows[0]
    contiguous = list(_contiguous_strides(spec.shape)) == list(spec.stride) or 0 in spec.shape
    if not contiguous or not out.is_contiguous() or list(out.shape) != shape:
        return False
    if out.dtype != spec.dtype:
        return False
    nbytes = out.numel() * out.element_size()
    if nbytes == 0:
        return True
    _read_exactly(file, spec, out.view(-1).view(torch.uint8), offset)
    return True


def _read_exactly(file: Path, spec: TensorSpec, buf: torch.Tensor, offset: int) -> None:
    """Fill uint8 ``buf`` with the tensor's bytes from element ``offset`` of its storage;
    :class:`CheckpointError` naming file and tensor if the file ends first."""
    with open_regular(file, spec.name) as fh:
        missing = pread_into(fh, buf, spec.data_offset + offset * spec.dtype.itemsize)
    if missing:
        got = buf.numel() - missing
        raise CheckpointError(
            file,
            spec.name,
            f"file ends {got} bytes into the tensor data ({missing} bytes missing)",
        )


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))
