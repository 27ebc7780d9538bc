"""Append-only journal of finished units: what makes a killed run resumable.

DESIGN.md "Reliability contract": killing a run at any point and rerunning gives the same
final result. Each finished unit appends one JSON line (its rows) to
``DIR/journal/<command>.rank<r>.jsonl``, flushed and fsynced before the next is appended.
An entry's key hashes the unit (names, shapes), the identity of every source file it read
(path, size, mtime, header hash) and the options that change figures, so a changed input
file or option invalidates exactly the entries it touches. A line cut short by a kill is
ignored. Floats round-trip exactly (JSON writes ``repr``; NaN as ``NaN``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular

__all__ = ["FileIdentities", "Journal", "entry_key", "fault_point"]

_FAULT_ENV = "PARAMGEOM_KILL_AFTER_UNITS"
# Cell types that a JSON line gives back as they were (NaN and infinities included).
_PLAIN = frozenset({str, int, float, bool, type(None)})
_units_done = 0


def fault_point(command: str) -> None:
    """Crash test hook: with ``PARAMGEOM_KILL_AFTER_UNITS=N`` in the environment the process
    sends itself SIGKILL right after its N-th journal entry (tests/test_resume.py kills a
    run at a known point this way, then checks the rerun). Does nothing otherwise."""
    global _units_done
    limit = os.environ.get(_FAULT_ENV)
    if not limit:
        return
    _units_done += 1
    if _units_done >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def entry_key(unit_digest: str, identities: list[str], options: str) -> str:
    """Journal key of a unit computed from these source-file identities with these options."""
    text = "|".join([unit_digest, options, *sorted(set(identities))])
    return hashlib.sha256(text.encode()).hexdigest()


class FileIdentities:
    """Identity keys of source files (:meth:`Checkpoint.identity`), looked up once per file
    rather than once per tensor when the journal keys of every unit are computed."""

    def __init__(self) -> None:
        self._keys: dict[tuple[int, str | Path], str] = {}

    def key(self, ckpt, file: str | Path) -> str:
        # Looked up as given (str or Path): building a Path per tensor took 3 s of a
        # 50,000-tensor diff. Two spellings of one file give the same identity key.
        k = (id(ckpt), file)
        got = self._keys.get(k)
        if got is None:
            got = self._keys[k] = ckpt.identity(Path(file)).key()
        return got


def _well_formed(entry: object) -> bool:
    """An entry as :meth:`Journal.append` writes it: a string key, a list of row objects and
    a list of string notes."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("rows"), list)
        and all(isinstance(r, dict) for r in entry["rows"])
        and isinstance(entry.get("notes", []), list)
        and all(isinstance(n, str) for n in entry.get("notes", []))
    )


class Journal:
    """The journal of one command in an output folder, written by one rank."""

    def __init__(self, out_dir: Path, command: str, rank: int = 0) -> None:
        self.dir = Path(out_dir) / "journal"
        self.command = command
        self.path = self.dir / f"{command}.rank{rank}.jsonl"
        self._lock_path = self.dir / f"{command}.rank{rank}.lock"
        self._fh = None
        self._lock_fd: int | None = None
        # Entries this object appended (as they were written), so that :meth:`collect`
        # does not parse them back from the file (1.5 s for 50,000 rows).
        self._appended: dict[str, dict[str, Any]] = {}

    def acquire(self) -> None:
        """Take this journal for the run: a second run of the same command (and rank) into
        the same output folder while this one runs is refused with one line, instead of
        both doing all the work and interleaving their entries. The lock is the kernel's
        (``flock``), so a killed run never leaves it held."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise CheckpointError(
                self._lock_path, None, f"cannot create the run lock ({exc.strerror or exc})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(
                    self.dir.parent, None, f"another paramgeom {self.command} is running into "
                    "this output folder; wait for it to finish (rerunning then resumes from its "
                    "journal) or choose another --out",
                ) from None  # fmt: skip
            raise CheckpointError(
                self._lock_path, None, f"cannot lock the run ({exc.strerror or exc})"
            ) from None
        self._lock_fd = fd

    def start(self) -> dict[str, dict[str, Any]]:
        """:meth:`acquire`, then :meth:`load` (the lock is let go again if loading fails)."""
        self.acquire()
        try:
            return self.load()
        except BaseException:
            self.close()
            raise

    def load(self) -> dict[str, dict[str, Any]]:
        """Every complete, well-formed entry written by any rank of any earlier run: key ->
        entry. Lines that are cut short, not JSON or not shaped like an entry are skipped
        (their units are computed again); a journal path that is not a regular file is an
        error naming it."""
        entries: dict[str, dict[str, Any]] = {}
        if not self.dir.is_dir():
            return entries
        for path in sorted(self.dir.glob(f"{self.command}.rank*.jsonl")):
            with open_regular(path) as fh:
                # open_regular's file is unbuffered: iterating it would read byte by byte
                # (3 s for a 3 MB journal); one read, then lines.
                data = fh.read()
                for line in data.splitlines(keepends=True):
                    if not line.endswith(b"\n"):
                        break  # the last line of a killed run
                    try:
                        entry = json.loads(line)
                    except (ValueError, RecursionError):
                        continue
                    if _well_formed(entry):
                        entries[entry["key"]] = entry
        return entries

    def collect(self, keyed: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
        """Rows and notes of the entries ``(key, unit name)``, in that order; a unit with no
        entry (from any rank) is an error naming it. When every entry was appended by this
        object, they are taken as appended (the same values: JSON round-trips them
        exactly) instead of being read back."""
        entries: dict[str, dict[str, Any]] = self._appended
        if any(key not in entries for key, _ in keyed):
            entries = self.load()
        rows: list[dict] = []
        notes: list[str] = []
        for key, unit in keyed:
            entry = entries.get(key)
            if entry is None:
                raise CheckpointError(self.dir, unit, "unit missing from the journal")
            rows += entry["rows"]
            notes += entry.get("notes", [])
        return rows, notes

    def append(self, key: str, unit: str, rows: list[dict], notes: list[str]) -> None:
        """Record a finished unit durably (flush + fsync) before the run moves on."""
        line = json.dumps({"key": key, "unit": unit, "rows": rows, "notes": notes}) + "\n"
        try:
            if self._fh is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and not self.path.is_file():
                    raise CheckpointError(self.path, unit, "journal path is not a regular file")
                self._fh = open(self.path, "ab")  # noqa: SIM115 - held open across units
                self._end_cut_line()
            self._fh.write(line.encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
            # What load() would give back for this line, when JSON round-trips it exactly:
            # rows of plain values (copied: the caller's later changes stay out of them).
            if all(type(v) in _PLAIN for r in rows for v in r.values()) and all(
                type(n) is str for n in notes
            ):
                self._appended[key] = {
                    "key": key,
                    "unit": unit,
                    "rows": [dict(r) for r in rows],
                    "notes": list(notes),
                }
        except OSError as exc:
            why = "out of space" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise CheckpointError(
                self.path, unit, f"cannot write the journal ({why}); finished units are kept: "
                "rerun the same command to go on from them",
            ) from None  # fmt: skip

    def _end_cut_line(self) -> None:
        """A line left unfinished by a kill or a full disk gets its newline now, so it
        stays one unreadable line (skipped by :meth:`load`) instead of swallowing the next
        entry."""
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            last = fh.read(1)
        if last != b"\n":
            self._fh.write(b"\n")

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
