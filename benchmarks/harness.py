"""Shared timing and reporting helpers of the benchmark scripts.

Timing rules (benchmarks/RESULTS.md): warm up first, interleave providers round by round
so that drift in a shared machine's bandwidth hits all of them alike, report medians with
p20-p80, and record the machine with every figure.
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch

import paramgeom


def once(fn, device: str = "cpu") -> float:
    """Seconds for one call of ``fn`` (synchronising CUDA before and after)."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def quantile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def time_interleaved(fns: dict, reps: int, device: str = "cpu") -> dict[str, list[float]]:
    """``reps`` timings of every provider, one round of all providers at a time."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(once(fn, device))
    return times


def machine() -> dict:
    """Date, platform, versions, usable backends, GPU and git revision of this run."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        sha = ""
    info = paramgeom.backends()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backends": {k: v.reason for k, v in info.items() if v.available},
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git": sha,
    }
