"""Scripts run on gloo CPU ranks from the tests: each script spawns its ranks itself
(``torch.multiprocessing.spawn``) and gets the file-store path as ``argv[1]``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run_ranks(script: str, folder: Path, *args: str, timeout: int = 300) -> None:
    """Write ``script`` into ``folder`` and run it with ``folder/store`` and ``args``; skip
    without gloo, fail with the script's stderr when it does not exit 0 (a rank that
    crashed: SIGSEGV included)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    path = folder / "ranks.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path), str(folder / "store"), *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


def gathered(root: Path) -> dict[str, torch.Tensor]:
    """The full tensors a writer script's rank 0 saved as ``root/full.pt`` (the oracle)."""
    return torch.load(root / "full.pt", weights_only=True)
