"""Runs of a streaming command (``diff``, ``trajectory``) across worker and torch thread
counts, for the tests that its tables do not depend on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from paramgeom.engine.pipeline import default_workers

WORKERS_THREADS = ((1, 1), (2, 2), (3, 2), (None, 2))  # None: the default worker count


def runs_across_workers(
    run: Callable[[Path, int | None], dict], tmp_path: Path
) -> list[tuple[Path, dict]]:
    """``run(out, workers)`` with torch on each thread count of :data:`WORKERS_THREADS`,
    into ``tmp_path / f"out{workers}-{threads}"``; asserts that each summary reports the
    worker count asked for and that torch's thread count is restored after each run.
    Returns ``(out, summary)`` per run."""
    before = torch.get_num_threads()
    done = []
    for workers, threads in WORKERS_THREADS:
        torch.set_num_threads(threads)
        try:
            out = tmp_path / f"out{workers}-{threads}"
            summary = run(out, workers)
            want = workers if workers is not None else default_workers(torch.device("cpu"))
        finally:
            torch.set_num_threads(before)
        assert summary["run"]["workers"] == want
        done.append((out, summary))
    assert torch.get_num_threads() == before  # restored after the runs
    return done
