"""Scripts run on gloo CPU ranks from the tests: each script spawns its ranks itself
(``torch.multiprocessing.spawn``) and gets the file-store path as ``argv[1]``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run_ranks(
    script: str, folder: Path, *args: str, timeout: int = 300, writer: bool = False
) -> None:
    """Write ``script`` into ``folder`` and run it with ``folder/store`` and ``args``; skip
    without gloo, fail with the script's stderr when it does not exit 0 (a rank that
    crashed: SIGSEGV included).

    ``writer=True`` (a fixture that only writes the test's input with torch's own
    distributed code, nothing of ours): one more try after a failed run, with a fresh
    store. torch's gloo teardown aborted a rank once in CI ("terminate called without an
    active exception") after the checkpoint was written; that is not what the tests test.
    Scripts that run our code keep one try."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    path = folder / "ranks.py"
    path.write_text(script)
    for attempt in range(2 if writer else 1):
        store = folder / ("store" if attempt == 0 else f"store{attempt}")
        proc = subprocess.run(
            [sys.executable, str(path), str(store), *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode == 0:
            return
    assert proc.returncode == 0, proc.stderr[-4000:]


def gathered(root: Path) -> dict[str, torch.Tensor]:
    """The full tensors a writer script's rank 0 saved as ``root/full.pt`` (the oracle)."""
    return torch.load(root / "full.pt", weights_only=True)
