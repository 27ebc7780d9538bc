"""Validate a ``.safetensors`` header before any tensor is read (DESIGN.md "Reliability contract").

File layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data
region. The JSON maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets relative to the start of the data region) plus an optional ``"__metadata__"``
object of strings.

:func:`read_header` checks everything the ``safetensors`` library would later refuse (so a
bad file fails when the checkpoint is opened, not halfway through a run) and a little more,
and turns each problem into a one-line :class:`CheckpointError` that names the file and,
when known, the tensor:

- header length <= file size - 8 and <= 100 MB (the library's limit);
- the file is a regular file (a FIFO is refused without blocking on it);
- the header is UTF-8 JSON holding one object, with no duplicate keys and nesting the
  parser can hold;
- ``__metadata__``, when present, maps strings to strings;
- each tensor has a known dtype, a shape of at most 64 non-negative ints each at most
  2^48 (a 0 elsewhere in the shape would let any size through the byte count) and
  ``[begin, end]`` offsets with ``begin <= end`` and ``end - begin == numel * itemsize``;
- the data region lies inside the file (else the file is truncated);
- the tensors' byte ranges do not overlap and cover the data region exactly, from 0 with
  no gaps and no trailing bytes (the library refuses holes and trailing bytes too).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular, parse_json

__all__ = [
    "MAX_DIM",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "TensorSpec",
    "dtype_name",
    "read_header",
]

MAX_HEADER_BYTES = 100_000_000
"""Largest header the ``safetensors`` library accepts (100 MB)."""

MAX_DIM = 1 << 48
"""Largest dimension accepted (2^48: a quarter of a pebibyte of bf16 in one row)."""

MAX_DIMS = 64
"""Most dimensions accepted (torch's own limit is 64 too)."""


def _known_dtypes() -> dict[str, torch.dtype]:
    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }
    # Rarer dtypes the safetensors library also maps, where this torch has them.
    for key, attr in (
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
        ("U16", "uint16"),
        ("U32", "uint32"),
        ("U64", "uint64"),
        ("C64", "complex64"),
    ):
        if hasattr(torch, attr):
            table[key] = getattr(torch, attr)
    return table


SAFETENSORS_DTYPES: dict[str, torch.dtype] = _known_dtypes()
"""safetensors dtype string -> torch dtype."""

_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors spelling of a torch dtype (``torch.bfloat16`` -> ``"BF16"``)."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(f"no safetensors dtype for {dtype}") from None


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as the header describes it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    file_offset: int
    """Absolute byte offset of the tensor's data in the file (8 + header length + begin)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header. ``entries`` is ordered by offset."""

    path: Path
    header_len: int
    file_size: int
    mtime_ns: int
    """Modification time of the file when the header was read (same ``fstat`` as the size)."""
    ctime_ns: int
    """Status-change time then (moves on every write and cannot be set back by ``utime``)."""
    inode: int
    sha256: str
    """Hex sha256 of the header's JSON bytes (the ``header_len`` bytes after the length)."""
    metadata: dict[str, str] = field(default_factory=dict)
    entries: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of the ``.safetensors`` file at ``path``.

    Reads only the first ``8 + header_len`` bytes. Raises :class:`CheckpointError` (one
    line, naming the file and, when known, the tensor) for anything malformed.
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size < 8:
                raise CheckpointError(
                    path, None, f"file too short for a safetensors header ({size} bytes)"
                )
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(
                    path,
                    None,
                    f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit "
                    "(corrupt or not a safetensors file)",
                )
            if header_len > size - 8:
                raise CheckpointError(
                    path,
                    None,
                    f"header length {header_len} is larger than the file "
                    f"({size} bytes; truncated or not a safetensors file)",
                )
            raw = f.read(header_len)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != header_len:  # the file shrank while we read it
        raise CheckpointError(path, None, f"truncated file: header of {header_len} bytes cut short")

    obj = parse_json(raw, path, "JSON header")
    if not isinstance(obj, dict):
        raise CheckpointError(
            path, None, f"corrupt JSON header (expected an object, got {type(obj).__name__})"
        )

    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(path, None, "__metadata__ must map strings to strings")

    data_start = 8 + header_len
    data_size = size - data_start
    ranges: list[tuple[int, int, str, torch.dtype, tuple[int, ...]]] = []
    for name, entry in obj.items():
        if not isinstance(entry, dict):
            raise CheckpointError(path, name, "header entry is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
        if missing:
            raise CheckpointError(path, name, f"header entry lacks {', '.join(missing)}")
        dt = entry["dtype"]
        if not isinstance(dt, str) or dt not in SAFETENSORS_DTYPES:
            raise CheckpointError(path, name, f"unknown dtype {dt!r}")
        dtype = SAFETENSORS_DTYPES[dt]
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(
                path, name, f"shape must be a list of non-negative ints, got {shape!r}"
            )
        if len(shape) > MAX_DIMS or any(d > MAX_DIM for d in shape):
            # torch sizes are int64 and the kernels index rows and columns with int64: a
            # dimension near 2^63 (possible beside a 0, which makes the byte count 0) would
            # overflow them, and no real tensor has one: a file's bytes bound every product.
            raise CheckpointError(
                path, name, f"shape {shape!r} has more than {MAX_DIMS} dimensions or a "
                f"dimension over {MAX_DIM} (2^48)",
            )  # fmt: skip
        offs = entry["data_offsets"]
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_int(o) and o >= 0 for o in offs)
        ):
            raise CheckpointError(
                path, name, f"data_offsets must be [begin, end] non-negative ints, got {offs!r}"
            )
        begin, end = offs
        if begin > end:
            raise CheckpointError(path, name, f"data_offsets [{begin}, {end}] has begin > end")
        need = math.prod(shape) * dtype.itemsize
        if end - begin != need:
            raise CheckpointError(
                path,
                name,
                f"dtype {dt} and shape {shape} need {need} bytes but data_offsets "
                f"[{begin}, {end}] span {end - begin}",
            )
        if data_start + end > size:
            raise CheckpointError(
                path,
                name,
                f"truncated file: header claims {data_start + end} bytes, file has {size}",
            )
        ranges.append((begin, end, name, dtype, tuple(shape)))

    ranges.sort(key=lambda r: (r[0], r[1]))
    pos = 0
    prev = None
    for begin, end, name, _, _ in ranges:
        if begin < pos:
            raise CheckpointError(
                path,
                name,
                f"data_offsets [{begin}, {end}] overlap tensor {prev!r} (which ends at {pos})",
            )
        if begin > pos:
            raise CheckpointError(
                path,
                name,
                f"gap in the data region: tensor starts at {begin}, previous data ends at {pos}",
            )
        pos = end
        if end > begin:
            prev = name
    if pos != data_size:
        raise CheckpointError(
            path,
            None,
            f"{data_size - pos} unexpected bytes after the last tensor "
            f"(data ends at {data_start + pos}, file has {size})",
        )

    entries = {
        name: TensorSpec(name, dtype, shape, end - begin, data_start + begin)
        for begin, end, name, dtype, shape in ranges
    }
    return SafetensorsHeader(
        path=path,
        header_len=header_len,
        file_size=size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        sha256=hashlib.sha256(raw).hexdigest(),
        metadata=dict(metadata),
        entries=entries,
    )
