"""Append-only journal of finished units: what makes a killed run resumable.

DESIGN.md "Reliability contract": killing a run at any point and rerunning gives the same
final result. Each finished unit appends one JSON line (its rows) to
``DIR/journal/<command>.rank<r>.jsonl``, flushed and fsynced before the next unit starts.
An entry's key hashes the unit (names, shapes), the identity of every source file it read
(path, size, mtime, header hash) and the options that change figures, so a changed input
file or option invalidates exactly the entries it touches. A line cut short by a kill is
ignored. Floats round-trip exactly (JSON writes ``repr``; NaN as ``NaN``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from paramgeom.checkpoints.errors import CheckpointError

__all__ = ["FileIdentities", "Journal", "entry_key", "fault_point"]

_FAULT_ENV = "PARAMGEOM_KILL_AFTER_UNITS"
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
        self._keys: dict[tuple[int, Path], str] = {}

    def key(self, ckpt, file: str | Path) -> str:
        k = (id(ckpt), Path(file))
        if k not in self._keys:
            self._keys[k] = ckpt.identity(Path(file)).key()
        return self._keys[k]


class Journal:
    """The journal of one command in an output folder, written by one rank."""

    def __init__(self, out_dir: Path, command: str, rank: int = 0) -> None:
        self.dir = Path(out_dir) / "journal"
        self.command = command
        self.path = self.dir / f"{command}.rank{rank}.jsonl"
        self._fh = None

    def load(self) -> dict[str, dict[str, Any]]:
        """Every complete entry written by any rank of any earlier run: key -> entry."""
        entries: dict[str, dict[str, Any]] = {}
        if not self.dir.is_dir():
            return entries
        for path in sorted(self.dir.glob(f"{self.command}.rank*.jsonl")):
            with open(path, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # the last line of a killed run
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and "key" in entry and "rows" in entry:
                        entries[entry["key"]] = entry
        return entries

    def collect(self, keyed: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
        """Rows and notes of the entries ``(key, unit name)``, in that order; a unit with no
        entry (from any rank) is an error naming it."""
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
                self._fh = open(self.path, "ab")  # noqa: SIM115 - held open across units
                self._end_cut_line()
            self._fh.write(line.encode())
            self._fh.flush()
            os.fsync(self._fh.fileno())
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
