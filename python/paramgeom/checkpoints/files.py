"""Opening input files without trusting what the path names (DESIGN.md "Reliability contract").

A path given as a checkpoint, shard, index or config may name a FIFO, a device or a
socket. A plain ``open()`` of a FIFO blocks until a writer appears, which hangs the run
before any check could refuse it, so every input file is opened non-blocking, checked to be
a regular file on the open descriptor (no race between a check and the open), and only then
switched back to blocking reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from paramgeom.checkpoints.errors import CheckpointError

__all__ = ["open_regular", "read_json", "read_regular_bytes"]

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, tensor: str | None = None) -> BinaryIO:
    """``path`` opened for binary reading, refused with :class:`CheckpointError` unless it is
    a regular file (symlinks to one are fine). Never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CheckpointError(path, tensor, f"cannot read file: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(path, tensor, f"not a regular file ({_kind(mode)})")
        if flags & getattr(os, "O_NONBLOCK", 0):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | Path, limit: int, what: str) -> bytes:
    """The whole of the regular file ``path`` (at most ``limit`` bytes, else refused)."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise CheckpointError(
                path, None, f"{what} of {size} bytes is over the {limit}-byte limit"
            )
        try:
            return fh.read(limit + 1)
        except OSError as exc:
            raise CheckpointError(path, None, f"cannot read file: {exc.strerror or exc}") from None


def _unicode(text: str) -> str:
    """``text`` if it is valid Unicode: JSON's ``\\udXXX`` escapes can spell lone
    surrogates, which no file name or tensor name may hold (writing them fails later)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"string {text!r} is not valid Unicode (a lone surrogate)") from None
    return text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[_unicode(key)] = _unicode(value) if isinstance(value, str) else value
    return out


def read_json(path: str | Path, what: str, limit: int = 100_000_000) -> Any:
    """Parse the JSON file ``path`` strictly: UTF-8, no duplicate keys at any level, no lone
    surrogates in keys or string values, nesting the parser can hold; anything else is one
    :class:`CheckpointError` naming ``what``."""
    raw = read_regular_bytes(path, limit, what)
    return parse_json(raw, path, what)


def parse_json(raw: bytes, path: str | Path, what: str) -> Any:
    """:func:`read_json` on bytes already read from ``path``."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise CheckpointError(path, None, f"corrupt {what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, None, f"corrupt {what} ({exc})") from None
