"""Many collective computations whose sums over ranks go out together: one all-reduce a round.

A monitor record on row-sharded (FSDP2) weights runs one sharded SVD per watched matrix, and
each makes a dozen small all-reduces (``b x b`` inner products, TSQR's ``R`` factors). With
gloo every collective costs about half a millisecond whatever its size, and every one makes
each rank wait for the slowest: measured on the 2-core VM (2 gloo ranks, 42 matrices of the
monitor benchmark's ``small`` model), 546 collectives took 0.49-0.67 s of a 1.0 s record.

:class:`Lockstep` runs the computations side by side, each on its own thread, taking turns
in a fixed order: computation ``i`` runs until it needs a sum over ranks (the ``sum``
function it is handed), then hands over to the next one; once every computation still
running has asked (or finished), their tensors are summed by one all-reduce of their
concatenation, in index order, and the first one goes on. Only one computation runs at a
time, so the work and its order are what running them one after the other would do, and a
round holds the same computations on every rank: each computation's sequence of sums is
decided by the same all-reduced values on every rank (what the sharded SVD already
guarantees), so computation ``i``'s ``c``-th sum is in round ``c`` everywhere. A round's
tensors of several dtypes or devices go out as one all-reduce per (dtype, device), in the
order they first appear.

A computation that raises leaves the rounds (its error is returned in its place); every rank
raises alike when the error comes from all-reduced values, as the sharded SVD's checks do.
A failed all-reduce fails every computation waiting on it and every later sum.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Lockstep"]

Sum = Callable[[torch.Tensor], torch.Tensor]


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` summed over the ranks of ``group`` (in place; returned)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


class Lockstep:
    """Run computations that sum tensors over the ranks of ``group`` so that each round of
    sums is one all-reduce (module docstring). Use :meth:`run`; ``collectives`` counts the
    all-reduces made so far."""

    def __init__(self, group) -> None:
        self.group = group
        self.collectives = 0
        self._lock = threading.Lock()
        # One semaphore a computation, released when its turn comes: waking only the one
        # whose turn it is (a shared condition woke all of them at every turn: 40 matrices,
        # 500 turns, 20,000 thread wake-ups).
        self._go: list[threading.Semaphore] = []
        self._running: list[bool] = []
        self._asked: dict[int, torch.Tensor] = {}
        self._answers: dict[int, torch.Tensor | BaseException] = {}
        self._broken: BaseException | None = None

    def run(self, computations: Sequence[Callable[[Sum], Any]]) -> list[Any]:
        """Each ``computations[i](sum)`` on its own thread, ``sum(x)`` returning ``x``
        summed over the ranks; returns their results in order, an exception object in place
        of a computation that raised. Every rank of ``group`` calls this with the same
        number of computations, in the same order. The threads take the caller's torch
        thread count, grad mode and, on a GPU, its current stream."""
        n = len(computations)
        self._go = [threading.Semaphore(0) for _ in range(n)]
        self._running = [True] * n
        self._asked, self._answers = {}, {}
        results: list[Any] = [None] * n
        context = _caller_context()
        threads = torch.get_num_threads()

        def body(i: int) -> None:
            # The caller's thread count, set in this thread: a thread torch has not yet seen
            # runs MKL's products at MKL's process-wide count (the cores) until its first
            # parallel torch op, and a GEMM's bits follow MKL's thread count.
            torch.set_num_threads(threads)
            self._go[i].acquire()
            try:
                with context():
                    results[i] = computations[i](lambda x: self._sum(i, x))
            except Exception as exc:  # noqa: BLE001 - handed back in the result's place
                results[i] = exc
            finally:
                with self._lock:
                    self._running[i] = False
                    nxt = self._next_turn(i)
                if nxt >= 0:
                    self._go[nxt].release()

        workers = [
            threading.Thread(target=body, args=(i,), name=f"paramgeom-lockstep-{i}", daemon=True)
            for i in range(n)
        ]
        for t in workers:
            t.start()
        if n:
            self._go[0].release()
        for t in workers:
            t.join()
        return results

    def _sum(self, i: int, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(f"an earlier all-reduce failed: {self._broken}")
            self._asked[i] = x
            nxt = self._next_turn(i)
        self._go[nxt].release()  # nxt is i itself when i is the only one running
        self._go[i].acquire()
        with self._lock:
            got = self._answers.pop(i)
        if isinstance(got, BaseException):
            raise RuntimeError(f"the all-reduce of this round failed: {got}") from got
        return got

    def _next_turn(self, i: int) -> int:
        """(Lock held.) Computation ``i`` asked or finished: the next running one after it
        has the turn; after the last, the round's all-reduce, then the first running one
        (-1: none left)."""
        nxt = next((j for j in range(i + 1, len(self._running)) if self._running[j]), None)
        if nxt is None:
            if self._asked:
                self._all_reduce_round()
            nxt = next((j for j, r in enumerate(self._running) if r), -1)
        return nxt

    def _all_reduce_round(self) -> None:
        """(Lock held; every other computation is waiting.) One all-reduce per (dtype,
        device) of the asked tensors, concatenated in index order; answers handed out."""
        asked, self._asked = sorted(self._asked.items()), {}
        kinds: dict[tuple[torch.dtype, torch.device], list[tuple[int, torch.Tensor]]] = {}
        for i, x in asked:
            kinds.setdefault((x.dtype, x.device), []).append((i, x))
        try:
            for items in kinds.values():
                flat = torch.cat([x.reshape(-1) for _, x in items])
                all_reduce_sum(flat, self.group)
                self.collectives += 1
                for (i, x), part in zip(items, flat.split([x.numel() for _, x in items]),
                                        strict=True):  # fmt: skip
                    self._answers[i] = part.view(x.shape)
        except Exception as exc:  # noqa: BLE001 - every waiting computation gets it
            self._broken = exc
            for i, _ in asked:
                self._answers[i] = exc


def _caller_context():
    """A context factory that gives a new thread the calling thread's grad mode and, where
    CUDA is in use, its current device and stream (both are per thread in torch)."""
    grad = torch.is_grad_enabled()
    stream = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        stream = torch.cuda.current_stream()

    @contextlib.contextmanager
    def context() -> Iterator[None]:
        with torch.set_grad_enabled(grad):
            if stream is None:
                yield
            else:
                with torch.cuda.device(stream.device), torch.cuda.stream(stream):
                    yield

    return context
