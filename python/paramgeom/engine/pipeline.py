"""The streaming pipeline of ``paramgeom diff`` and ``paramgeom trajectory``: one loop, two
kinds of work.

Both commands open checkpoints, cut the work into units (a tensor pair, an expert batch, a
matrix followed over a run), share the units among ranks, and stream them: each unit read
on a background thread while the previous one computes, its figures checked against its
input files (:class:`~paramgeom.engine.loader.InputWatch`), appended to the journal before
the next starts, and rank 0 collects every rank's journal. What differs, how a unit is read
and what is computed from it, comes in as functions (:func:`stream_units`).

On CPU the units can be computed ``workers`` at a time, each on one thread: the spectra's
LAPACK solves are single-threaded (multi-threaded ones scale poorly at these sizes, and
OpenBLAS's idle threads spin against torch's), so one unit at a time leaves cores idle for
half of its time; independent units side by side fill them. Every unit then computes on
one thread whatever the worker, rank or core count, so its figures do not depend on them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.engine.journal import Journal, fault_point
from paramgeom.engine.loader import InputWatch
from paramgeom.engine.plan import share_for_rank
from paramgeom.engine.progress import ByteProgress

__all__ = [
    "Streamed",
    "compute_device",
    "default_workers",
    "describe_inputs",
    "make_output_dir",
    "resolve_workers",
    "stream_units",
]


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


UNIT_MEMORY_FACTOR = 4
"""A unit in flight is assumed to hold up to this many times its chunk budget (the values as
stored, their bf16 copies, float32 row blocks): the default worker count keeps that many
budgets within the machine's memory."""


def default_workers(device: torch.device, chunk_bytes: int = 1 << 30) -> int:
    """Units computed at once by default: on CPU one per thread torch was given (its
    ``OMP_NUM_THREADS``, else the usable cores), each unit on one thread, but no more than
    physical memory holds at :data:`UNIT_MEMORY_FACTOR` chunk budgets (``chunk_bytes``,
    ``--chunk-bytes``) per unit; on a GPU 0, one unit at a time on the calling thread (the
    device serialises the work anyway)."""
    if device.type != "cpu":
        return 0
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # not POSIX: no memory bound
        memory = 0
    by_memory = memory // (UNIT_MEMORY_FACTOR * max(1, chunk_bytes)) if memory > 0 else 1 << 30
    return max(1, min(torch.get_num_threads(), by_memory))


def resolve_workers(workers: int | None, device: torch.device, unit_bytes: int) -> int:
    """The worker count a run uses: ``workers`` as given (``--workers``, at least 1; a
    ``ValueError`` otherwise), None for :func:`default_workers` with ``unit_bytes`` as the
    chunk budget; on a GPU always one unit at a time on the calling thread (0)."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers (--workers) must be >= 1, got {workers}")
    if workers is None or device.type != "cpu":
        return default_workers(device, unit_bytes)
    return workers


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

    def run_facts(self, ranks: int, workers: int) -> dict[str, Any]:
        """The run's own facts, not figures (a summary's ``run``): ranks and workers, this
        rank's units computed now and taken from the journal, the bytes computed (each
        unit's ``nbytes``), the seconds of the streaming loop."""
        return {
            "ranks": ranks,
            "workers": workers,
            "units_computed": len(self.computed),
            "units_from_journal": len(self.mine) - len(self.computed),
            "bytes_computed": sum(u.nbytes for u in self.computed),
            "seconds_streaming": self.seconds,
        }


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
    workers: int = 0,
    inline: Callable[[Any], bool] | None = None,
) -> Streamed | None:
    """Compute this rank's share of ``units`` (each with a ``name``) that the journal
    ``out/journal/<command>.rank<r>.jsonl`` does not hold under ``keys[unit]``, and journal
    each; on rank 0 return everything collected, elsewhere None.

    ``feed(todo)``: iterator of ``(unit, loaded)`` in ``todo``'s order, reading ahead
    (closed when the loop ends, also on an error); ``compute(unit, loaded)``: the unit's
    rows and notes; ``reads(unit)``: the (checkpoint, tensor names) its figures come from,
    checked unchanged after the compute; ``nbytes(unit)``: its size for the progress bar.
    ``workers``: 0 computes one unit at a time on this thread with torch's threads; ``n >=
    1`` computes up to ``n`` units at once on worker threads, each on one CPU thread
    (``compute`` must then be safe to run side by side), journaled in ``todo``'s order;
    ``inline(unit)`` true: that unit computes on this thread instead (units of many tiny
    tensors, whose Python work would only contend for the interpreter lock).
    A failure on any rank is a :class:`CheckpointError` on every rank; what was journaled
    before it stays (with workers, also the units that finished beside the failed one).
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    mine = share_for_rank(list(units), ctx.rank, ctx.world)
    journal = Journal(out, command, ctx.rank)
    done = journal.start()
    todo = [u for u in mine if keys[u] not in done]
    ok = False
    watch = InputWatch()
    started = time.perf_counter()

    def run(unit, loaded):
        return watch.compute(reads(unit), unit.name, functools.partial(compute, unit, loaded))

    try:
        total = sum(nbytes(u) for u in mine)
        with ByteProgress(command, total, quiet or not ctx.is_main) as bar:
            bar.advance(sum(nbytes(u) for u in mine if keys[u] in done))
            with contextlib.closing(feed(todo)) as queue:
                for unit, (rows, notes) in _computed(queue, run, workers, inline):
                    bar.describe(unit.name)
                    journal.append(keys[unit], unit.name, rows, notes)
                    fault_point(command)
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


def _computed(
    queue: Iterator[tuple[Any, Any]],
    run: Callable[[Any, Any], Any],
    workers: int,
    inline: Callable[[Any], bool] | None = None,
):
    """``(unit, run(unit, loaded))`` for the items of ``queue``, in its order: here one at a
    time (``workers == 0``), else up to ``workers`` at once on worker threads, each unit on
    one torch thread (a unit ``inline`` says so: on this thread, while the workers go on).
    When a unit fails, the units running beside it finish, those that succeeded are yielded
    (nothing computed is lost), then its error is raised; units not started are dropped."""
    if workers == 0:
        for unit, loaded in queue:
            yield unit, run(unit, loaded)
            del loaded
        return
    pending: collections.deque[tuple[Any, Future]] = collections.deque()
    # Each worker sets its own count: a thread torch has not yet seen runs MKL's products at
    # MKL's process-wide count (the cores) until its first parallel torch op, and a GEMM's
    # bits follow MKL's thread count (measured: 1024 x 128 and 20000 x 64 Grams differ).
    with (
        _one_thread_each(),
        ThreadPoolExecutor(
            workers, "paramgeom-unit", initializer=torch.set_num_threads, initargs=(1,)
        ) as pool,
    ):
        try:
            try:
                for unit, loaded in queue:
                    if inline is not None and inline(unit):
                        pending.append((unit, _run_here(run, unit, loaded)))
                    else:
                        pending.append((unit, pool.submit(run, unit, loaded)))
                    del loaded  # the worker holds it for as long as it computes
                    # A worker free before the next read: results wait (in order) for the
                    # oldest; the inputs of finished units are already released.
                    while len(running := [f for _, f in pending if not f.done()]) >= workers:
                        wait(running, return_when=FIRST_COMPLETED)
                    while pending and pending[0][1].done():
                        yield from _take(pending)
            except Exception:  # a read failed: what the workers compute is still kept
                yield from _successes(pending)
                raise
            while pending:
                yield from _take(pending)
        finally:
            for _, fut in pending:
                fut.cancel()


def _run_here(run: Callable[[Any, Any], Any], unit, loaded) -> Future:
    fut: Future = Future()
    try:
        fut.set_result(run(unit, loaded))
    except Exception as exc:
        fut.set_exception(exc)
    return fut


def _take(pending: collections.deque[tuple[Any, Future]]):
    """The oldest unit's result; when it failed, the others' successes, then its error."""
    unit, fut = pending.popleft()
    exc = fut.exception()
    if exc is None:
        yield unit, fut.result()
        return
    yield from _successes(pending)
    raise exc


def _successes(pending: collections.deque[tuple[Any, Future]]):
    """Every pending unit that computes without an error, once it has finished."""
    while pending:
        unit, fut = pending.popleft()
        if not fut.cancelled() and fut.exception() is None:
            yield unit, fut.result()


@contextlib.contextmanager
def _one_thread_each() -> Iterator[None]:
    """torch (and the native kernels, which take torch's thread count) on one thread in the
    calling thread (the inline units) and as the count threads started inside the block take
    at their first parallel op (the workers also set theirs when they start); the caller's
    count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
