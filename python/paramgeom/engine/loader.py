"""Reading a pair of tensors for the kernels, and the bounded prefetch queue.

Every figure is computed on bf16 values (DESIGN.md "Metrics": both checkpoints as bf16):
bf16 tensors are used as stored, fp32/fp16 ones rounded to bf16 (round to nearest even),
block-scaled FP8 ones dequantised block by block (``q * scale_inv`` in fp32) and rounded.

A side is read as the file holds it (:class:`Stored`: the stored values, zero-copy where
the reader can, and the block-scale grid) and moved to the compute device as such (one
byte per FP8 weight over PCIe). The scan's kernel reads those bytes and rounds or
dequantises inside its read (:func:`stored_stats_args`); only the spectral figures, which
read each matrix many times, materialise bf16 values (:meth:`Stored.bf16`), on the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from paramgeom import _contract, _dtypes
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.fp8 import check_scales, dequantize_blocks
from paramgeom.checkpoints.pairing import FP8_DTYPES, TensorRef
from paramgeom.checkpoints.reader import mapped_fault_count

__all__ = [
    "InputWatch",
    "Prefetcher",
    "Stored",
    "read_bf16",
    "read_stored",
    "stored_stats_args",
    "to_device",
]


@dataclass(frozen=True)
class Stored:
    """One side of a pair as the file holds it: ``values`` in the storage dtype, ``scale``
    the float block-scale grid of a block-scaled FP8 weight (else None), and ``row0`` the
    weight row that row 0 of ``values`` is (row-block reads of a 2-D weight)."""

    values: torch.Tensor
    scale: torch.Tensor | None = None
    row0: int = 0

    def to(self, device: torch.device, stream=None) -> Stored:
        """The same side on ``device`` (as stored: no conversion on the way)."""
        if device.type == "cpu":
            return self
        scale = None if self.scale is None else to_device(self.scale, device, stream)
        return Stored(to_device(self.values, device, stream), scale, self.row0)

    def split(self) -> list[Stored]:
        """The matrices of a stack (``[E, m, n]`` values, one scale grid per matrix), each
        as its own side."""
        scales = [None] * self.values.shape[0] if self.scale is None else list(self.scale)
        return [Stored(v, s) for v, s in zip(self.values, scales, strict=True)]

    def bf16(self) -> torch.Tensor:
        """The values as bf16, where they are: bf16 as stored, fp32 / fp16 rounded (round to
        nearest even), block-scaled FP8 dequantised (``q * scale`` in fp32) and rounded,
        unscaled FP8 widened (exact)."""
        v = self.values
        if self.scale is not None:
            # A 3-D fused expert stack has a scale grid per expert; row0 is 0 for it.
            v = dequantize_blocks(v, self.scale, row_start=self.row0)
        elif v.dtype in FP8_DTYPES:
            v = v.float()  # unscaled fp8: the stored values are the weights
        return v if v.dtype == torch.bfloat16 else v.to(torch.bfloat16)


def read_stored(ckpt, ref: TensorRef, start: int | None = None, stop: int | None = None) -> Stored:
    """Rows ``[start, stop)`` (dim 0; all when None) of one side of a pair, as stored (CPU).
    A scale grid that does not fit its weight is bad input naming the file and tensor."""
    info = ref.info
    if start is None:
        raw = ckpt.read(info.name, copy=False)  # zero-copy where the reader can
        start = 0
    else:
        raw = ckpt.read_rows(info.name, start, stop, copy=False)
    if ref.scale is None:
        return Stored(raw)
    scale = ckpt.read(ref.scale.name)
    try:
        # A 3-D fused expert stack has a scale grid per expert; rows are experts then.
        if raw.dim() == 2:
            row0 = start
        else:
            scale, row0 = scale[start : start + raw.shape[0]], 0
        check_scales(raw, scale, _contract.SCALE_BLOCK, row0, "block scales")
    except ValueError as exc:
        raise CheckpointError(info.file, info.name, str(exc)) from None
    return Stored(raw, scale, row0)


def read_bf16(ckpt, ref: TensorRef, start: int | None = None, stop: int | None = None):
    """Rows ``[start, stop)`` (dim 0; all when None) of one side of a pair, as CPU bf16."""
    return read_stored(ckpt, ref, start, stop).bf16()


def stored_stats_args(s0: Stored, s1: Stored) -> dict[str, Any] | None:
    """How ``paramgeom.diff_stats`` reads a pair as stored, giving the figures of the bf16
    values (keyword arguments: ``w0``, ``w1`` and ``cast`` or ``scale_inv`` /
    ``scale_row0``), or None when the kernels cannot (mixed dtypes, one side scaled, a
    scaled stack): then both sides are materialised as bf16 first."""
    a, b = s0.values, s1.values
    if a.dtype != b.dtype or a.dtype not in _dtypes.SUPPORTED:
        return None
    if (s0.scale is None) != (s1.scale is None):
        return None
    if s0.scale is not None:
        if a.dim() != 2 or s0.row0 != s1.row0:
            return None
        return {"w0": a, "w1": b, "scale_inv": (s0.scale, s1.scale), "scale_row0": s0.row0}
    if a.dtype in (torch.float32, torch.float16):
        return {"w0": a, "w1": b, "cast": "bf16"}  # rounded inside the kernel's read
    return {"w0": a, "w1": b}  # bf16 as stored; unscaled fp8 values are bf16 values


class InputWatch:
    """What makes a figure computed from a file that changed under the run an error, never a
    result: after each unit's compute, every file it read must be as it was when opened
    (:meth:`Checkpoint.verify`: size, mtime, ctime, inode) and no zero-copy page may have
    vanished (:func:`~paramgeom.checkpoints.reader.mapped_fault_count`); only then is the
    unit journaled. A compute failure is explained by a changed file when there is one, else
    reported as one line naming the tensor."""

    def __init__(self) -> None:
        self._faults = mapped_fault_count()

    def check(self, reads: list[tuple[Any, list[str]]], since: int | None = None) -> None:
        """``reads``: (checkpoint, names of the tensors read from it) of one unit;
        ``since``: the fault count its compute started from (else the last check's). The
        count is the process's: a fault while units compute side by side fails each of
        them, never only the one that happened to look first."""
        for ckpt, names in reads:
            ckpt.verify(names)
        now = mapped_fault_count()
        if now != (self._faults if since is None else since):
            self._faults = now
            where = " or ".join(str(ckpt.path) for ckpt, _ in reads)
            raise CheckpointError(
                where, None, "a file shrank while it was read (pages past its end read as "
                "zeros): figures read from it are not kept",
            )  # fmt: skip

    def compute(self, reads: list[tuple[Any, list[str]]], unit: str, work: Callable[[], Any]):
        """``work()``, then :meth:`check`; an exception from ``work`` becomes a
        :class:`CheckpointError` naming the changed file, else ``unit`` and its file. Safe
        to call from several threads at once."""
        since = self._faults  # not the count now: a fault before this unit's start counts too
        try:
            out = work()
        except CheckpointError:
            raise
        except Exception as exc:
            self.check(reads, since)
            file = reads[-1][0].tensors[reads[-1][1][0]].file if reads and reads[-1][1] else None
            msg = " ".join(str(exc).split())[:300]
            raise CheckpointError(
                file, unit, f"computing its figures failed ({type(exc).__name__}: {msg})"
            ) from exc
        self.check(reads, since)
        return out


def to_device(t: torch.Tensor, device: torch.device, stream=None) -> torch.Tensor:
    """Move a CPU tensor to ``device``. On CUDA the copy is from pinned memory and, when a
    side ``stream`` is given, asynchronous on it: the caller makes its compute stream wait
    on ``stream`` before using the result (the next tensor's copy overlaps this compute)."""
    if device.type == "cpu":
        return t
    pinned = t.pin_memory()
    if stream is None:
        return pinned.to(device)
    with torch.cuda.stream(stream):
        out = pinned.to(device, non_blocking=True)
    out.record_stream(torch.cuda.current_stream(device))
    return out


class Prefetcher:
    """Runs ``load(item)`` for the items in order on a background thread, at most ``depth``
    results ahead of the consumer (the read of the next tensor overlaps the compute of the
    current one; memory stays bounded by ``depth + 1`` loaded items). Exceptions raised by
    ``load`` re-raise in the consumer at the item that caused them."""

    _DONE = object()

    def __init__(self, items: Iterable[Any], load: Callable[[Any], Any], depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(list(items), load), name="paramgeom-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items, load) -> None:
        for item in items:
            try:
                result = (item, load(item), None)
            except BaseException as exc:  # handed to the consumer, not lost in the thread
                result = (item, None, exc)
            if not self._put(result) or result[2] is not None:
                return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        while True:
            got = self._queue.get()
            if got is self._DONE:
                return
            item, value, exc = got
            if exc is not None:
                raise exc
            yield item, value

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
