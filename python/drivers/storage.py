"""Writing the drivers' files: folders that are complete or absent, one line on a full disk.

DESIGN.md "Command line" (the reliability contract): a failing environment gives one line
on stderr naming the file, exit status 2 and no traceback, and nothing already written is
lost. The drivers raise :class:`~paramgeom.drivers.errors.DriverError` for it, which
``paramgeom.drivers.cli.guarded`` turns into that line; this module makes the errors.

- :func:`atomic_folder`: a folder (``checkpoint-<step>/``) is written as its hidden sibling
  ``.<name>.tmp-<pid>`` in the same parent (so the rename stays on one filesystem), every
  file fsynced, then renamed to its name. A full disk, an error or Ctrl-C removes the
  temporary; a killed run leaves it behind, where listings that match final names
  (:func:`paramgeom.drivers.loop.saved_steps`) never see it and :func:`remove_stale`
  deletes it on the next run into that folder.
- :func:`write_error` / :func:`writing`: the :class:`DriverError` of an ``OSError`` (or of
  the safetensors writer, whose errors are not ``OSError``) while writing a file, naming
  it: ``cannot write runs/opd/checkpoint-3/model.safetensors: No space left on device``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from paramgeom.drivers.errors import DriverError

__all__ = [
    "TMP_MARK",
    "WRITE_ERRORS",
    "atomic_folder",
    "fsync_file",
    "is_temporary",
    "remove_stale",
    "temporary_sibling",
    "write_error",
    "writing",
]

# Temporaries are named ".<final name>.tmp-<pid>[...]": hidden, and never a final name.
TMP_MARK = ".tmp-"


def _safetensor_error() -> type[Exception]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return OSError
    return SafetensorError


# What a write on a full or failing disk raises: OSError (ENOSPC, EFBIG, EIO, EDQUOT, ...)
# from Python, SafetensorError ("I/O error: File too large (os error 27)") from safetensors.
WRITE_ERRORS: tuple[type[Exception], ...] = (OSError, _safetensor_error())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    m = re.search(r"os error (\d+)", text)
    if m:
        return os.strerror(int(m.group(1)))
    lines = text.splitlines()
    return lines[0] if lines else type(exc).__name__


def write_error(path: Path | str, exc: BaseException) -> DriverError:
    """The one-line error of a failed write of ``path``: ``cannot write PATH: REASON``."""
    return DriverError(f"cannot write {path}: {_reason(exc)}")


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Turn a :data:`WRITE_ERRORS` error inside the block into :func:`write_error` of
    ``path``."""
    try:
        yield
    except WRITE_ERRORS as exc:
        raise write_error(path, exc) from None


def fsync_file(path: Path | str) -> None:
    """Flush ``path``'s data to the disk (``os.fsync``); errors propagate."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes renames and new entries durable; some filesystems refuse fsync on a folder.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def temporary_sibling(path: Path | str, tag: str = "") -> Path:
    """``.<name>.tmp-<pid><tag>`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}{tag}")


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of this module's temporaries."""
    return name.startswith(".") and TMP_MARK in name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def remove_stale(parent: Path | str, prefix: str = "checkpoint-") -> list[Path]:
    """Delete the temporaries of ``<prefix>*`` entries in ``parent`` (left by a killed run);
    returns what was there. Call it only on a folder this process owns."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    stale = sorted(parent.glob(f".{prefix}*{TMP_MARK}*"))
    for path in stale:
        _remove(path)
    return stale


@contextmanager
def atomic_folder(folder: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``folder`` to write into; when the block ends without
    error, fsync every file in it and rename it to ``folder`` (an existing ``folder`` is
    replaced). On any error the temporary is removed and the error propagates, so
    ``folder`` is either complete or as it was.

    Errors of the block are the caller's to name (it knows which file it writes; the name
    to report is the final one, ``folder / relative path``); errors of the fsyncs and the
    rename become :func:`write_error`.
    """
    folder = Path(folder)
    tmp = temporary_sibling(folder)
    _remove(tmp)
    try:
        with writing(folder):
            tmp.mkdir(parents=True)
        yield tmp
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                with writing(folder / path.relative_to(tmp)):
                    fsync_file(path)
        _fsync_dir(tmp)
        with writing(folder):
            if folder.exists() or folder.is_symlink():
                old = temporary_sibling(folder, "-old")
                _remove(old)
                os.replace(folder, old)
                try:
                    os.replace(tmp, folder)
                except OSError:
                    os.replace(old, folder)  # put the previous folder back
                    raise
                _remove(old)
            else:
                os.replace(tmp, folder)
        _fsync_dir(folder.parent)
    except BaseException:
        _remove(tmp)
        raise
