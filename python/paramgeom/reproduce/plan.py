"""The jobs of ``paramgeom reproduce``: every training run, diff and trajectory, as commands.

Each job is a command line of the public tools (``python -m paramgeom.drivers.{sft,opd,rlvr}``,
``python -m paramgeom.drivers.pretrain``, ``paramgeom diff``, ``paramgeom trajectory``), so the
report's "commands" section can list exactly what reruns any single step. Jobs name the jobs
they need; analysis jobs build their command only when their run has finished (a run stopped
early by the guardrail ends at another step than planned).

Layout of the output folder::

    models/                       teacher and student base (the drivers' cache)
    runs/<size>/<run>/            checkpoints, metrics.jsonl, run.json of one training run
    analysis/<size>/<run>/diff/   paramgeom diff of the final checkpoint against checkpoint-0
    analysis/<size>/<run>/trajectory/
    logs/<job>.log                stdout and stderr of each job
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paramgeom.reproduce.profiles import Profile, lock_k, rotation_k

__all__ = [
    "GUARD_ACTIONS",
    "METHODS",
    "Job",
    "RunSpec",
    "build_plan",
    "guard_rule",
    "project_ks",
]

METHODS = ("opd", "sft", "rlvr")
# The guardrail's actions (GeometryMonitor on_lock); "log" changes nothing, so plain OPD with
# the monitor on is the "log" arm.
GUARD_ACTIONS = ("stop", "project", "perturb")


@dataclass(frozen=True)
class RunSpec:
    """One training run: which driver, which flags, what it is for."""

    size: str
    name: str  # e.g. "opd-s0", "opd-keep50", "sft-proj16", "opd-guard-stop-s1"
    driver: str  # sft, opd, rlvr
    seed: int
    group: str  # main, variant, sufficiency, guardrail, scaling
    method: str  # the method the run belongs to (opd, sft, rlvr)
    flags: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # names of runs (same size) this run reads


@dataclass
class Job:
    """One command. ``build`` returns its argv (without the interpreter) when it is due."""

    id: str
    phase: str
    build: Callable[[], list[str]]
    out: Path
    needs: tuple[str, ...] = ()
    module: str = "paramgeom.cli"  # run as ``python -m <module> <argv>``
    run: RunSpec | None = None
    extra: dict = field(default_factory=dict)


def guard_rule(profile: Profile, width: int) -> tuple[float, float]:
    """The guardrail experiment's over-locking rule: mean stable rank of dW below 1.5 K
    (K the width-relative lock K) at a monitor record before 20% of training. Calibrated
    on our own plain OPD runs so that it fires: tiny model, lr 3e-6, the monitor's stable
    rank fell 7.7, 5.6, 4.5, 4.1 at 5, 10, 15, 20% of training and stayed near 3.5-4
    (K = 4), so "below K before 20%" never fires, while below 1.5 K = 6 fires at 10%, where
    the paper's OPD locks. The experiment asks whether acting at that point helps.
    Returns ``(overlock_rank, overlock_fraction)``."""
    return 1.5 * lock_k(width), 0.2


def project_ks(profile: Profile, width: int) -> tuple[int, ...]:
    """Subspace sizes of the functional sufficiency test: the paper's 16, and the
    width-relative lock K (16 at width 4096 is 1/256 of the width; at width 128 a top-16
    subspace is an eighth of the space, too generous to constrain anything)."""
    return tuple(sorted({profile.project_k, lock_k(width)}, reverse=True))


def _size_runs(profile: Profile, size: str, width: int, full: bool) -> list[RunSpec]:
    seeds = profile.seeds
    s0 = seeds[0]
    mon = ("--monitor-every", str(profile.monitor_interval), "--monitor-k", str(lock_k(width)))
    group = "main" if full else "scaling"
    runs = [
        RunSpec(size, f"{m}-s{s}", m, s, group, m, mon if m == "opd" else ())
        for s in seeds
        for m in METHODS
    ]
    if not full:
        return runs
    for m in METHODS:
        runs.append(RunSpec(size, f"{m}-keep50", m, s0, "variant", m, ("--token-keep", "0.5")))
    runs.append(RunSpec(size, "opd-offpolicy", "opd", s0, "variant", "opd", ("--off-policy",)))
    runs.append(RunSpec(size, "opd-mix50", "opd", s0, "variant", "opd", ("--mix-rlvr", "0.5")))
    for k in project_ks(profile, width):
        for m in METHODS:
            ref = f"{m}-s{s0}"
            flags = ("--project-grad-from", f"@{ref}", "--project-k", str(k),
                     "--project-at", str(profile.project_at))  # fmt: skip
            runs.append(RunSpec(size, f"{m}-proj{k}", m, s0, "sufficiency", m, flags, (ref,)))
    rank, frac = guard_rule(profile, width)
    for action in GUARD_ACTIONS:
        for s in seeds:
            flags = mon + (
                "--monitor-trigger",
                "over-locking",
                "--overlock-rank",
                f"{rank:g}",
                "--overlock-fraction",
                f"{frac:g}",
                "--monitor-action",
                action,
            )
            runs.append(
                RunSpec(size, f"opd-guard-{action}-s{s}", "opd", s, "guardrail", "opd", flags)
            )
    return runs


def checkpoints(run_dir: Path) -> list[Path]:
    """Every saved checkpoint of a run after checkpoint-0, in training order."""
    from paramgeom.drivers.loop import saved_steps

    return [run_dir / f"checkpoint-{s}" for s in saved_steps(run_dir) if s > 0]


def final_checkpoint(run_dir: Path) -> Path:
    """The last checkpoint a finished run wrote (the driver always saves its last step)."""
    return checkpoints(run_dir)[-1]


def build_plan(
    profile: Profile, out: Path, widths: dict[str, int], device: str = "cpu", threads: int = 1
) -> list[Job]:
    """Every job of ``profile`` writing under ``out``, in an order that respects ``needs``."""
    out = Path(out)
    cache = out / "models"
    jobs: list[Job] = []
    sizes = (profile.main_size,) + tuple(s for s in profile.scaling_sizes if s != profile.main_size)
    common_task = ["--eval-size", str(profile.eval_size), "--digits", str(profile.digits)]
    for size in sizes:
        base = [
            "--cache",
            str(cache),
            "--model-size",
            size,
            "--teacher-steps",
            str(profile.teacher_steps),
            "--student-steps",
            str(profile.student_steps),
            "--student-target",
            f"{profile.student_target:g}",
            *common_task,
            "--threads",
            str(threads),
        ]
        for role in ("teacher", "student"):
            argv = ["--role", role, *base, "--quiet"]
            jobs.append(
                Job(
                    id=f"pretrain-{role}-{size}",
                    phase="pretrain",
                    build=lambda a=argv: list(a),
                    out=cache,
                    module="paramgeom.drivers.pretrain",
                )
            )
        width = widths[size]
        for spec in _size_runs(profile, size, width, full=size == profile.main_size):
            run_dir = out / "runs" / size / spec.name
            flags = []
            for f in spec.flags:
                flags.append(str(out / "runs" / size / f[1:]) if f.startswith("@") else f)
            batch = (
                ["--prompts", str(profile.prompts), "--samples", str(profile.samples)]
                if spec.driver != "sft"
                else ["--batch", str(profile.batch)]
            )
            argv = [
                "--out",
                str(run_dir),
                "--steps",
                str(profile.steps),
                "--save-every",
                str(profile.save_every),
                "--eval-every",
                str(profile.eval_every),
                "--seed",
                str(spec.seed),
                "--lr",
                f"{profile.lr:g}",
                *batch,
                *base,
                "--device",
                device,
                "--overwrite",
                "--quiet",
                *flags,
            ]
            # RLVR on-policy reads no teacher: it starts while the teacher still trains.
            teacher_free = spec.driver == "rlvr" and "--off-policy" not in spec.flags
            pre = () if teacher_free else (f"pretrain-teacher-{size}",)
            needs = (*pre, f"pretrain-student-{size}") + tuple(
                f"train-{size}-{n}" for n in spec.needs
            )
            jobs.append(
                Job(
                    id=f"train-{size}-{spec.name}",
                    phase="train",
                    build=lambda a=argv: list(a),
                    out=run_dir,
                    needs=needs,
                    module=f"paramgeom.drivers.{spec.driver}",
                    run=spec,
                )
            )
            ana = out / "analysis" / size / spec.name
            rank = rotation_k(width, profile.diff_rank)
            k_lock = lock_k(width)

            # Every run of a size starts from the same student: its decompositions are
            # computed by the first diff and read back by the others (keyed by content).
            cache = out / "analysis" / size / "base-cache"

            def diff_argv(run_dir=run_dir, ana=ana, rank=rank, cache=cache) -> list[str]:
                return [
                    "diff",
                    str(run_dir / "checkpoint-0"),
                    str(final_checkpoint(run_dir)),
                    "--out",
                    str(ana / "diff"),
                    "--base-cache",
                    str(cache),
                    "--rank",
                    str(rank),
                    "--device",
                    device,
                    "--quiet",
                ]

            def traj_argv(run_dir=run_dir, ana=ana, k=k_lock) -> list[str]:
                return [
                    "trajectory",
                    str(run_dir / "checkpoint-0"),
                    *[str(p) for p in checkpoints(run_dir)],
                    "--out",
                    str(ana / "trajectory"),
                    "--k",
                    str(k),
                    "--device",
                    device,
                    "--quiet",
                ]

            train_id = f"train-{size}-{spec.name}"
            jobs.append(
                Job(
                    id=f"diff-{size}-{spec.name}",
                    phase="diff",
                    build=diff_argv,
                    out=ana / "diff",
                    needs=(train_id,),
                    run=spec,
                )
            )
            jobs.append(
                Job(
                    id=f"trajectory-{size}-{spec.name}",
                    phase="trajectory",
                    build=traj_argv,
                    out=ana / "trajectory",
                    needs=(train_id,),
                    run=spec,
                )
            )
    return jobs
