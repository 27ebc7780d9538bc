"""The streaming pipeline of ``paramgeom diff`` and ``paramgeom trajectory``: one loop, two
kinds of work.

Both commands open checkpoints, cut the work into units (a tensor pair, an expert batch, a
matrix followed over a run), share the units among ranks, and stream them: each unit read
on a background thread while the previous one computes, its figures checked against its
input files (:class:`~paramgeom.engine.loader.InputWatch`), appended to the journal before
the next starts, and rank 0 collects every rank's journal. What differs, how a unit is read
and what is computed from it, comes in as functions (:func:`stream_units`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.engine.journal import Journal, fault_point
from paramgeom.engine.loader import InputWatch
from paramgeom.engine.plan import share_for_rank
from paramgeom.engine.progress import ByteProgress

__all__ = ["Streamed", "compute_device", "describe_inputs", "make_output_dir", "stream_units"]


def compute_device(name: str) -> torch.device:
    """The device ``--device`` names (under torchrun, this rank's GPU); bad values are a
    ``ValueError`` (exit 2)."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    return torch.device("cpu")


def make_output_dir(out: Path, what: str = "output folder") -> None:
    """Create the folder ``out`` (the ``what`` of the message), or fail as bad input
    (exit 2) with one line."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            out, None, f"cannot create the {what} ({exc.strerror or exc})"
        ) from None


def describe_inputs(ckpt) -> dict[str, Any]:
    """``summary.json``'s record of one input checkpoint: path, files (size, header hash)."""
    files = []
    for f in ckpt.files:
        ident = ckpt.identity(f)
        files.append(
            {"name": Path(f).name, "size": ident.size, "header_sha256": ident.header_sha256}
        )
    return {"path": str(ckpt.path), "files": files, "n_tensors": len(ckpt.tensors)}


@dataclass(frozen=True)
class Streamed:
    """What rank 0 gets back: every unit's rows and notes in unit order (from all ranks'
    journals), and this rank's share: units computed now or taken from the journal, and
    the seconds the streaming loop took."""

    rows: list[dict]
    notes: list[str]
    mine: list
    computed: list
    seconds: float


def stream_units(
    command: str,
    out: Path,
    ctx,
    units: Sequence[Hashable],
    keys: Mapping[Any, str],
    feed: Callable[[list], Iterator[tuple[Any, Any]]],
    compute: Callable[[Any, Any], tuple[list[dict], list[str]]],
    reads: Callable[[Any], list[tuple[Any, list[str]]]],
    nbytes: Callable[[Any], int],
    quiet: bool = False,
) -> Streamed | None:
    """Compute this rank's share of ``units`` (each with a ``name``) that the journal
    ``out/journal/<command>.rank<r>.jsonl`` does not hold under ``keys[unit]``, and journal
    each; on rank 0 return everything collected, elsewhere None.

    ``feed(todo)``: iterator of ``(unit, loaded)`` in ``todo``'s order, reading ahead
    (closed when the loop ends, also on an error); ``compute(unit, loaded)``: the unit's
    rows and notes; ``reads(unit)``: the (checkpoint, tensor names) its figures come from,
    checked unchanged after the compute; ``nbytes(unit)``: its size for the progress bar.
    A failure on any rank is a :class:`CheckpointError` on every rank; what was journaled
    before it stays.
    """
    mine = share_for_rank(list(units), ctx.rank, ctx.world)
    journal = Journal(out, command, ctx.rank)
    done = journal.start()
    todo = [u for u in mine if keys[u] not in done]
    ok = False
    watch = InputWatch()
    started = time.perf_counter()
    try:
        total = sum(nbytes(u) for u in mine)
        with ByteProgress(command, total, quiet or not ctx.is_main) as bar:
            bar.advance(sum(nbytes(u) for u in mine if keys[u] in done))
            with contextlib.closing(feed(todo)) as queue:
                for unit, loaded in queue:
                    bar.describe(unit.name)
                    rows, notes = watch.compute(
                        reads(unit), unit.name, functools.partial(compute, unit, loaded)
                    )
                    journal.append(keys[unit], unit.name, rows, notes)
                    fault_point(command)
                    del loaded
                    bar.advance(nbytes(unit))
        ok = True
    finally:
        journal.close()
        seconds = time.perf_counter() - started
        all_ok = ctx.all_ok(ok)
    if not all_ok:
        raise CheckpointError(None, None, "another rank failed; its error is above")
    if not ctx.is_main:
        return None
    rows, notes = journal.collect([(keys[u], u.name) for u in units])
    return Streamed(rows, notes, mine, todo, seconds)
