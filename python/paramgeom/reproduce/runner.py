"""Run the jobs of a plan: in parallel, resumable, with a progress bar and one log per job.

Resume: a job that finished writes ``<out>/.reproduce-job.json`` (its command, exit status,
seconds). Running ``paramgeom reproduce`` again skips every job whose marker holds the same
command, and restarts the others from scratch (training runs pass ``--overwrite``; diff and
trajectory resume from their own journals). A killed run therefore loses at most the jobs
that were in flight.

Each job runs as its own process with ``threads`` CPU threads (OMP/MKL variables and the
drivers' ``--threads``), ``jobs`` at a time: on small models several single-thread
processes use a multi-core CPU far better than one multi-thread process.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from paramgeom.reproduce.plan import Job

__all__ = ["JobsFailedError", "MARKER", "RunReport", "command_line", "run_jobs"]

MARKER = ".reproduce-job.json"


class JobsFailedError(RuntimeError):
    """Some jobs failed; ``failed`` maps job id to its log file."""

    def __init__(self, failed: dict[str, Path]) -> None:
        self.failed = failed
        names = ", ".join(sorted(failed))
        super().__init__(
            f"{len(failed)} job(s) failed ({names}); logs: {next(iter(failed.values())).parent}"
        )


@dataclass
class RunReport:
    done: list[str]
    reused: list[str]
    seconds: dict[str, float]


def command_line(job: Job, argv: Sequence[str]) -> str:
    """The shell command a user types to rerun ``job`` (``paramgeom ...`` for the CLI)."""
    head = ["paramgeom"] if job.module == "paramgeom.cli" else ["python", "-m", job.module]
    return shlex.join([*head, *argv])


def _marker(job: Job) -> Path:
    return job.out / MARKER if job.phase != "pretrain" else job.out / f".{job.id}.json"


def _finished(job: Job) -> dict | None:
    path = _marker(job)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("id") == job.id and rec.get("returncode") == 0 else None


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    # SciPy's OpenBLAS on one thread whatever --threads: see paramgeom.cli (its idle
    # workers spin against torch's and starve them).
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _run_one(job: Job, log_dir: Path, threads: int) -> tuple[int, float, list[str]]:
    argv = job.build()
    log = log_dir / f"{job.id}.log"
    cmd = [sys.executable, "-m", job.module, *argv]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        fh.write(f"$ {command_line(job, argv)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(threads))
    secs = time.perf_counter() - t0
    if rc == 0:
        job.out.mkdir(parents=True, exist_ok=True)
        rec = {
            "id": job.id,
            "argv": argv,
            "command": command_line(job, argv),
            "returncode": rc,
            "seconds": round(secs, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = _marker(job).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, _marker(job))
    return rc, secs, argv


def run_jobs(
    jobs: Sequence[Job],
    log_dir: Path,
    workers: int = 2,
    threads: int = 1,
    on_event: Callable[[str, Job, dict], None] | None = None,
) -> RunReport:
    """Run ``jobs`` (skipping finished ones), at most ``workers`` at a time, each after the
    jobs it needs. ``on_event(kind, job, info)`` reports "reused", "start", "done" and
    "failed". Raises :class:`JobsFailedError` after every runnable job has run when any failed
    (jobs needing a failed one are not started)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda *_a: None)
    by_id = {j.id: j for j in jobs}
    state: dict[str, str] = {}
    report = RunReport(done=[], reused=[], seconds={})
    for job in jobs:
        missing = [n for n in job.needs if n not in by_id]
        if missing:
            raise ValueError(f"job {job.id} needs unknown job(s) {missing}")
        rec = _finished(job)
        if rec is not None:
            state[job.id] = "done"
            report.reused.append(job.id)
            report.seconds[job.id] = float(rec.get("seconds", 0.0))
            emit("reused", job, rec)
    failed: dict[str, Path] = {}
    lock = threading.Lock()
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while True:
            for job in jobs:
                if len(running) >= max(1, workers):
                    break
                if job.id in state:
                    continue
                needs = [state.get(n) for n in job.needs]
                if any(s in ("failed", "skipped") for s in needs):
                    state[job.id] = "skipped"
                    continue
                if all(s == "done" for s in needs):
                    state[job.id] = "running"
                    emit("start", job, {})
                    running[pool.submit(_run_one, job, log_dir, threads)] = job
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                try:
                    rc, secs, _ = fut.result()
                except Exception as exc:  # a build() that cannot find its inputs
                    rc, secs = 1, 0.0
                    (log_dir / f"{job.id}.log").write_text(f"cannot start: {exc}\n")
                with lock:
                    if rc == 0:
                        state[job.id] = "done"
                        report.done.append(job.id)
                        report.seconds[job.id] = secs
                        emit("done", job, {"seconds": secs})
                    else:
                        state[job.id] = "failed"
                        failed[job.id] = log_dir / f"{job.id}.log"
                        emit("failed", job, {"returncode": rc})
    if failed:
        raise JobsFailedError(failed)
    return report


def finished_commands(jobs: Sequence[Job]) -> list[dict]:
    """The marker of every finished job, in plan order (for the report's commands)."""
    out = []
    for job in jobs:
        rec = _finished(job)
        if rec is not None:
            out.append(
                {
                    "id": job.id,
                    "phase": job.phase,
                    "command": rec["command"],
                    "seconds": rec.get("seconds"),
                }
            )
    return out
