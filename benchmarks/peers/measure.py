"""Measuring processes and the machine, for the peer comparison (run.py in this folder).

A tool runs as one process under ``/usr/bin/time -f "%e %M %U %S"`` (wall, peak RSS, CPU)
while a sampler polls /proc for the peak anonymous and file-backed RSS of its process tree;
the CPU time the rest of the machine used meanwhile is recorded as contention. Also here: the
1-minute load (and waiting for a quiet machine), dropping a checkpoint from the page cache,
the cold and warm read rate of a pair, and the record of the machine and versions a run used.
Linux only (/proc, posix_fadvise).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _busy_jiffies() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle, sum(f[:8])


def _wait_quiet(limit: float, wait_s: float) -> float:
    """Wait up to ``wait_s`` for the 1-minute load to drop below ``limit``; return it."""
    t0 = time.time()
    load = _loadavg()
    while load >= limit and time.time() - t0 < wait_s:
        time.sleep(10)
        load = _loadavg()
    return load


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    """Peak VmRSS / RssAnon / RssFile of the process tree under ``pid`` (0.2 s polls)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak = pid, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            todo, tot = [self.pid], {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
            while todo:
                p = todo.pop()
                st = _status_kb(p)
                if p != self.pid:  # /usr/bin/time itself is not counted
                    for k in tot:
                        tot[k] += st.get(k, 0)
                todo += _children(p)
            for k in tot:
                self.peak[k] = max(self.peak[k], tot[k])
            self._stop_evt.wait(0.2)

    def stop(self) -> dict[str, int]:
        self._stop_evt.set()
        self.join()
        return self.peak


def run_measured(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` under /usr/bin/time; wall, peak RSS, CPU, contention, exit status."""
    timefile = log.with_suffix(".time")
    busy0, tot0 = _busy_jiffies()
    load0 = _loadavg()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%e %M %U %S", "-o", str(timefile), *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started here
            rc = proc.wait()
    wall_outer = time.perf_counter() - t0
    peak = sampler.stop()
    busy1, tot1 = _busy_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    out = {
        "cmd": cmd,
        "rc": rc,
        "timed_out": timed_out,
        "timeout_s": timeout,
        "wall_s": wall_outer,
        "load_before": load0,
        "load_after": _loadavg(),
        "peak_rss_anon_mb": peak["RssAnon"] / 1024,
        "peak_rss_file_mb": peak["RssFile"] / 1024,
        "peak_rss_sampled_mb": peak["VmRSS"] / 1024,
        "log": str(log),
    }
    text = timefile.read_text().split() if timefile.exists() else []
    if not timed_out and len(text) >= 4:
        try:
            wall, maxrss, usr, sys_ = (float(x) for x in text[-4:])
            out.update(wall_s=wall, peak_rss_mb=maxrss / 1024, cpu_s=usr + sys_)
        except ValueError:
            pass
    if "cpu_s" in out:
        # CPU seconds that other processes used during the run (contention indicator).
        others = (busy1 - busy0) / hz - out["cpu_s"]
        out["others_cpu_s"] = max(0.0, others)
        out["others_cores"] = max(0.0, others) / max(out["wall_s"], 1e-9)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def evict(folder: Path) -> None:
    """Drop this checkpoint's pages from the page cache (only these files)."""
    for f in _files(folder):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a pair just written) are not dropped otherwise
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(folders: list[Path]) -> dict:
    """Cold sequential read of the pair (after eviction): bytes, seconds, GB/s."""
    for f in folders:
        evict(f)
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    n, t0 = 0, time.perf_counter()
    for folder in folders:
        for f in _files(folder):
            with open(f, "rb", buffering=0) as fh:
                while True:
                    k = fh.readinto(view)
                    if not k:
                        break
                    n += k
    dt = time.perf_counter() - t0
    # A second (warm) pass: page-cache read rate.
    t1 = time.perf_counter()
    for folder in folders:
        for f in _files(folder):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
    dw = time.perf_counter() - t1
    return {"bytes": n, "cold_s": dt, "cold_gbps": n / dt / 1e9, "warm_s": dw,
            "warm_gbps": n / dw / 1e9}  # fmt: skip


def machine_info() -> dict:
    import platform

    import torch

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=REPO).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "python", "csrc"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()  # fmt: skip
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    try:
        import weightwatcher

        wwv = weightwatcher.__version__
    except Exception:  # noqa: BLE001
        wwv = None
    try:
        import transformers

        tfv = transformers.__version__
    except Exception:  # noqa: BLE001
        tfv = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": int(mem) / 2**20,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "weightwatcher": wwv,
        "transformers": tfv,
        "git": sha + (" (python/ or csrc/ modified)" if dirty else ""),
    }
