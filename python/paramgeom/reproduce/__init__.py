"""``paramgeom reproduce``: the paper's findings from our own runs, end to end.

Phases (each a set of command lines of the public tools, see :mod:`.plan`): pretrain the
teacher and the student base, train OPD / SFT / RLVR and the paper's variants, diff every
final checkpoint against its start, follow every run's trajectory, then analyse
(:mod:`.analysis`) and write ``report.md``, ``report.html``, ``summary.json``,
``commands.sh`` and the plots. Killing it and running the same command again resumes: every
finished job is kept (:mod:`.runner`).

This module sits at the top of the stack: it drives ``paramgeom.drivers`` and the
``paramgeom`` commands as separate processes and reads their files.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from paramgeom.reproduce.profiles import PROFILES, Profile

__all__ = ["PROFILES", "Profile", "run_reproduce"]


def _widths(profile: Profile) -> dict[str, int]:
    from paramgeom.drivers.models import SIZES

    return {s: SIZES[s].hidden for s in (profile.main_size, *profile.scaling_sizes)}


def _check_out(out: Path, profile: Profile, device: str) -> None:
    meta = out / "reproduce.json"
    if meta.exists():
        try:
            prev = json.loads(meta.read_text())
        except ValueError:
            prev = {}
        if prev.get("profile") not in (None, profile.name) or prev.get("device", device) != device:
            raise ValueError(
                f"{out} holds a '{prev.get('profile')}' run on {prev.get('device')}; pass "
                "another --out (or remove it) to run a different profile"
            )
    elif out.exists() and any(out.iterdir()):
        raise ValueError(
            f"{out} exists and is not a paramgeom reproduce folder; pass another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"profile": profile.name, "device": device}, indent=2) + "\n")


def run_reproduce(
    out: str | Path,
    profile: str = "quick",
    jobs: int | None = None,
    threads: int = 1,
    device: str = "cpu",
    quiet: bool = False,
) -> dict[str, Any]:
    """Run (or resume) every job of ``profile`` into ``out`` and write the report.

    Returns the summary (also written as ``summary.json``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from paramgeom.report.tables import write_json
    from paramgeom.reproduce.analysis import analyse
    from paramgeom.reproduce.plan import build_plan
    from paramgeom.reproduce.report import plot_all, write_report
    from paramgeom.reproduce.runner import finished_commands, run_jobs
    from paramgeom.reproduce.table import key_results

    try:
        import transformers  # noqa: F401  (the drivers build their models with it)
    except ImportError:
        raise ValueError(
            "reproduce trains models with transformers: pip install 'paramgeom[train]'"
        ) from None
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
    prof = PROFILES[profile]
    out = Path(out)
    _check_out(out, prof, device)
    widths = _widths(prof)
    workers = jobs or max(1, (os.cpu_count() or 1) // max(1, threads))
    plan = build_plan(prof, out, widths, device=device, threads=threads)
    console = Console(stderr=True, quiet=quiet)
    console.print(
        f"reproduce --{profile}: {len(plan)} jobs, {workers} at a time, {threads} thread(s) "
        f"each, into {out}"
        + (
            "; the full profile takes hours on a CPU (--quick: ~25 min on 2 cores)"
            if profile == "full" and device == "cpu"
            else ""
        )
    )
    t0 = time.perf_counter()
    running: set[str] = set()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[now]}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(f"reproduce --{profile}", total=len(plan), now="")
        phases: dict[str, int] = {}
        for job in plan:
            phases[job.phase] = phases.get(job.phase, 0) + 1
        phase_task = {p: bar.add_task(f"  {p}", total=n, now="") for p, n in phases.items()}

        def on_event(kind: str, job, info: dict) -> None:
            if kind == "start":
                running.add(job.id)
            else:
                running.discard(job.id)
                bar.advance(task)
                bar.advance(phase_task[job.phase])
            if kind == "failed":
                console.print(
                    f"[red]failed[/red] {job.id} (exit {info['returncode']}): "
                    f"see {out / 'logs' / (job.id + '.log')}"
                )
            now = sorted(j for j in running if j.startswith(job.phase))
            bar.update(phase_task[job.phase], now=", ".join(now)[:70])

        report = run_jobs(plan, out / "logs", workers=workers, threads=threads, on_event=on_event)
        analysis = bar.add_task("  analysis", total=None, now="runs, subspaces, report")
        summary = analyse(out, prof, widths, progress=lambda m: bar.update(analysis, now=m))
        bar.update(analysis, total=1, completed=1, now="")
    summary["output"] = str(out)
    # This invocation's wall time; a resumed run reuses jobs whose time is in "jobs".
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["jobs"] = {
        "run": len(report.done),
        "reused": len(report.reused),
        "workers": workers,
        "threads_per_job": threads,
        "seconds": report.seconds,
    }
    summary["command"] = (
        shlex.join(["paramgeom", "reproduce", *sys.argv[2:]])
        if sys.argv[1:2] == ["reproduce"]
        else None
    )
    if prof.note:
        summary.setdefault("notes", []).append(prof.note)
    rows = key_results(summary)
    summary["key_results"] = [
        {
            "key": r.key,
            "diagnostic": r.diagnostic,
            "paper": list(r.paper),
            "ours": list(r.ours),
            "values": r.values,
            "claim": r.claim,
            "agrees": r.agrees,
            "why": r.why,
        }
        for r in rows
    ]
    commands = finished_commands(plan)
    plots = plot_all(summary, out)
    write_report(summary, rows, out, plots, commands)
    with (out / "commands.sh").open("w") as fh:
        fh.write(
            "#!/usr/bin/env bash\n# Every step of this reproduce run, in order; run any line "
            "alone to redo that step.\nset -euo pipefail\n"
        )
        for c in commands:
            fh.write(f"# {c['id']}\n{c['command']}\n")
    write_json(summary, out / "summary.json")
    return summary
