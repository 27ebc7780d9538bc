"""Command line shared by ``python -m paramgeom.drivers.{sft,opd,rlvr}``.

Usage (DESIGN.md "Drivers")::

    python -m paramgeom.drivers.opd --out DIR [--steps N] [--save-every K] [--seed S]
        [--model-size tiny|small|base] [--model PATH] [--teacher PATH] [--cache DIR] ...

Without ``--model`` / ``--teacher`` the embedded default runs: the addition task, and a
teacher and a weaker student base trained on it once and cached (see
:mod:`paramgeom.drivers.teacher`; first use trains them, a few minutes for ``tiny``).
``--model PATH`` starts from any Hugging Face causal LM folder with its tokenizer, and
``--teacher PATH`` uses any teacher folder whose tokenizer maps ids exactly as the
student's (OPD compares their probabilities token by token); the task's prompts
(``"37+485="``) go through that tokenizer.

Output folder: ``checkpoint-0`` (the starting weights) and ``checkpoint-<step>`` (bf16 Hugging
Face folders, readable by ``paramgeom diff`` / ``trajectory``), ``metrics.jsonl`` and
``run.json`` (config, seed, versions, models used, results). Exit status 0 on success, 2 on
bad input or a failed write (full disk: the line names the file) with one line on stderr
(no traceback). A checkpoint folder is complete or absent: each is written as a hidden
``.checkpoint-<step>.tmp-<pid>`` and renamed when complete; a rerun into the folder removes
those a killed run left (:mod:`paramgeom.drivers.storage`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from paramgeom.drivers.errors import DriverError
from paramgeom.drivers.storage import remove_stale
from paramgeom.monitor import LOCK_ACTIONS, MonitorConfig

__all__ = ["build_parser", "run"]

DESCRIPTIONS = {
    "sft": "SFT: cross-entropy on teacher samples (default) or gold answers.",
    "opd": "On-policy distillation: the student samples; per-token advantage "
    "A_t = -(log pi_s(a_t) - log pi_t(a_t)) in a policy-gradient loss "
    "(or --full-kl: exact full-vocabulary reverse KL).",
    "rlvr": "RLVR: GRPO-style group-normalised advantages from the exact-answer reward.",
}


# --monitor-trigger value -> GeometryMonitor(trigger=...).
MONITOR_TRIGGERS = {"lock": "lock", "over-locking": "over_locking"}
# Monitor flags (beyond --monitor-every): argparse dest -> (flag, default).
MONITOR_FLAGS = {
    "monitor_action": ("--monitor-action", "log"),
    "monitor_trigger": ("--monitor-trigger", "lock"),
    "monitor_k": ("--monitor-k", MonitorConfig.k),
    "overlock_rank": ("--overlock-rank", MonitorConfig.overlock_rank),
    "overlock_fraction": ("--overlock-fraction", MonitorConfig.overlock_fraction),
    "perturb_scale": ("--perturb-scale", MonitorConfig.perturb_scale),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage stays available through --help)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fraction(text: str) -> float:
    x = float(text)
    if not 0.0 < x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return x


def _unit(text: str) -> float:
    x = float(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return x


def _positive_int(text: str) -> int:
    x = int(text)
    if x < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return x


def _nonneg(text: str) -> float:
    x = float(text)
    if not (math.isfinite(x) and x >= 0.0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return x


def _steps_list(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated steps, got {text!r}") from None
    return steps


def build_parser(driver: str) -> argparse.ArgumentParser:
    """The argument parser of one driver (``sft``, ``opd`` or ``rlvr``)."""
    p = _Parser(prog=f"python -m paramgeom.drivers.{driver}", description=DESCRIPTIONS[driver])
    policy = driver in ("opd", "rlvr")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (checkpoints, metrics, run.json)")
    g.add_argument("--steps", type=_positive_int, default=300, help="optimiser steps (300)")
    g.add_argument("--save-every", type=_positive_int, default=None,
                   help="save checkpoint-<step> every K steps (default steps/10); the last "
                   "step and checkpoint-0 are always saved")  # fmt: skip
    g.add_argument(
        "--save-steps",
        type=_steps_list,
        default=None,
        help="explicit comma-separated steps to save instead of --save-every",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of data, sampling and order (0)")
    g.add_argument("--eval-every", type=int, default=50, help="held-out eval every K steps (50)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--device", default="cpu", help="torch device (cpu)")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    g.add_argument(
        "--bf16-autocast",
        action="store_true",
        help="bf16 autocast for forward passes (master weights stay fp32)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    # The monitor's options default to None so that giving one without --monitor-every
    # can be told apart (an error); _run fills in the monitor's defaults.
    g = p.add_argument_group("geometry monitor (paramgeom.GeometryMonitor)")
    g.add_argument("--monitor-every", type=int, default=0, metavar="N",
                   help="geometry monitor every N steps into metrics.jsonl (unchanged "
                   "fraction, ||dW||, stable rank, Sim_K, lock, over-locking guardrail); "
                   "0: off (the flags below need N > 0)")  # fmt: skip
    g.add_argument("--monitor-action", choices=LOCK_ACTIONS, default=None,
                   help="what the monitor does, once, at the trigger (log)")  # fmt: skip
    g.add_argument("--monitor-trigger", choices=sorted(MONITOR_TRIGGERS), default=None,
                   help="lock: at lock detection (default); over-locking: at the first "
                   "record the over-locking guardrail flags")  # fmt: skip
    g.add_argument(
        "--monitor-k",
        type=_positive_int,
        default=None,
        metavar="K",
        help=f"K of Sim_K and of the lock rule's srank < K ({MonitorConfig.k})",
    )
    g.add_argument("--overlock-rank", type=_nonneg, default=None, metavar="R",
                   help="guardrail: flag a stable rank below R ... "
                   f"({MonitorConfig.overlock_rank})")  # fmt: skip
    g.add_argument("--overlock-fraction", type=_unit, default=None, metavar="F",
                   help="... before this fraction of --steps "
                   f"({MonitorConfig.overlock_fraction})")  # fmt: skip
    g.add_argument("--perturb-scale", type=_nonneg, default=None, metavar="S",
                   help="perturb action: noise norm as a fraction of each matrix's ||dW|| "
                   f"({MonitorConfig.perturb_scale})")  # fmt: skip

    g = p.add_argument_group("models")
    g.add_argument("--model", default=None,
                   help="student: a Hugging Face causal LM folder (default: the cached "
                   "embedded student base)")  # fmt: skip
    g.add_argument("--teacher", default=None,
                   help="teacher: a Hugging Face causal LM folder with the student's "
                   "tokenizer (default: the cached embedded teacher)")  # fmt: skip
    g.add_argument("--model-size", default="tiny", help="embedded size: tiny, small, base")
    g.add_argument("--teacher-size", default=None, help="embedded teacher size (--model-size)")
    g.add_argument("--cache", default=None,
                   help="cache of embedded teacher/student (default $PARAMGEOM_CACHE or "
                   "~/.cache/paramgeom/drivers)")  # fmt: skip
    g.add_argument(
        "--teacher-steps",
        type=_positive_int,
        default=1500,
        help="training steps of the embedded teacher (1500)",
    )
    g.add_argument(
        "--student-steps",
        type=_positive_int,
        default=600,
        help="most training steps of the embedded student base (600)",
    )
    g.add_argument(
        "--student-target",
        type=_unit,
        default=0.6,
        help="the student base stops at this held-out accuracy (0.6)",
    )

    g = p.add_argument_group("task")
    g.add_argument("--digits", type=int, default=3, help="digits per operand (difficulty, 3)")
    g.add_argument("--eval-size", type=_positive_int, default=512, help="held-out problems")
    g.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=None,
        help="completion length limit (digits + 2)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=3e-6,
                   help="AdamW learning rate (3e-6: paper-like unchanged fractions at "
                   "weight scale 0.02)")  # fmt: skip
    g.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (0)")
    g.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (0)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="global grad-norm clip (1)")
    if policy:
        g.add_argument("--prompts", type=_positive_int, default=16, help="prompts per step (16)")
        g.add_argument(
            "--samples",
            type=_positive_int,
            default=8,
            help="samples per prompt, the GRPO group (8)",
        )
    else:
        g.add_argument("--batch", type=_positive_int, default=128, help="sequences/step (128)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1)")
    g.add_argument("--token-keep", type=_fraction, default=1.0,
                   help="token sparsification: keep this fraction rho of tokens, loss "
                   "rescaled by T/kept (1)")  # fmt: skip

    g = p.add_argument_group("objective")
    if driver == "sft":
        g.add_argument(
            "--sft-target",
            choices=["teacher", "gold"],
            default="teacher",
            help="completions: teacher samples (default) or gold answers",
        )
    if driver == "opd":
        g.add_argument(
            "--mix-rlvr",
            type=_unit,
            default=1.0,
            metavar="A",
            help="A = a*A_OPD + (1-a)*A_RLVR (1: pure OPD)",
        )
        g.add_argument(
            "--full-kl",
            action="store_true",
            help="exact full-vocabulary reverse KL instead of the sampled token",
        )
    if policy:
        g.add_argument(
            "--off-policy",
            action="store_true",
            help="rollouts sampled from the teacher, truncated importance ratios",
        )
        g.add_argument(
            "--is-clip", type=float, default=1.0, help="importance ratios min(pi_s/pi_t, C) (C = 1)"
        )

    g = p.add_argument_group("functional sufficiency (gradient projection)")
    g.add_argument("--project-grad-from", default=None, metavar="CKPT",
                   help="a run folder (dW = checkpoint near --project-at of its steps minus "
                   "its checkpoint-0) or a model folder (dW = it minus the start)")  # fmt: skip
    g.add_argument("--project-k", type=_positive_int, default=16, help="subspace size (16)")
    g.add_argument(
        "--project-at",
        type=_fraction,
        default=0.2,
        help="fraction of the reference run's steps (0.2)",
    )
    g.add_argument(
        "--project-mode",
        choices=["grad", "update"],
        default="grad",
        help="project the gradient (paper) or also every AdamW update",
    )
    g.add_argument(
        "--project-freeze-others",
        action="store_true",
        help="zero the gradients of parameters that are not projected",
    )
    return p


# ---------------------------------------------------------------------------------------


def _versions() -> dict:
    import safetensors
    import transformers

    import paramgeom

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "paramgeom": paramgeom.__version__,
        "platform": platform.platform(),
    }


def _save_steps(args) -> tuple[int, ...]:
    if args.save_steps is not None:
        bad = [s for s in args.save_steps if not 1 <= s <= args.steps]
        if bad:
            raise DriverError(f"--save-steps {bad} outside 1..{args.steps}")
        steps = set(args.save_steps)
    else:
        every = args.save_every or max(1, args.steps // 10)
        steps = set(range(every, args.steps + 1, every))
    steps.add(args.steps)
    return tuple(sorted(steps))


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DriverError(f"--out {out} exists and is not a folder")
    ours = [p for p in out.glob("checkpoint-*")] + [out / "run.json", out / "metrics.jsonl"]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise DriverError(f"--out {out} already holds a run ({existing[0].name}); pass --overwrite")
    for path in existing:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise DriverError(f"--out {out}: cannot remove {path.name} ({exc.strerror})") from None
    # Checkpoints half-written by a killed run (hidden .checkpoint-<step>.tmp-<pid>).
    remove_stale(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DriverError(f"--out {out}: cannot create ({exc.strerror})") from None


def _needs_teacher(driver: str, args) -> bool:
    if driver == "sft":
        return args.sft_target == "teacher"
    if driver == "opd":
        return args.mix_rlvr > 0 or args.off_policy
    return args.off_policy


def _check_task_encodable(codec, task, role: str) -> None:
    probe = task.eval_set()[0]
    try:
        codec.prompt_ids(probe.prompt)
        codec.completion_ids(probe.answer)
    except ValueError as exc:
        raise DriverError(f"{role} tokenizer cannot encode the task: {exc}") from None


def _validate(args) -> None:
    if not args.lr > 0:
        raise DriverError(f"--lr must be > 0, got {args.lr}")
    if args.temperature < 0:
        raise DriverError(f"--temperature must be >= 0, got {args.temperature}")
    if not args.grad_clip > 0:
        raise DriverError(f"--grad-clip must be > 0, got {args.grad_clip}")
    if getattr(args, "is_clip", 1.0) <= 0:
        raise DriverError(f"--is-clip must be > 0, got {args.is_clip}")
    if args.eval_every < 0 or args.warmup < 0:
        raise DriverError("--eval-every and --warmup must be >= 0")
    if args.monitor_every < 0:
        raise DriverError(f"--monitor-every must be >= 0, got {args.monitor_every}")
    given = [flag for dest, (flag, _) in MONITOR_FLAGS.items() if getattr(args, dest) is not None]
    if given and not args.monitor_every:
        raise DriverError(f"{given[0]} needs --monitor-every N > 0")
    uses_rlvr = hasattr(args, "samples") and getattr(args, "mix_rlvr", 0.0) < 1.0
    if uses_rlvr and args.samples < 2:
        raise DriverError("RLVR advantages need --samples >= 2 (the GRPO group)")


def guarded(prog: str, body) -> int:
    """Run ``body()`` as a command: exit 2 with one line when transformers is missing, on
    a :class:`DriverError` (bad input; a failed write, naming the file:
    :mod:`paramgeom.drivers.storage`) or on an ``OSError`` no caller named, 130 on Ctrl-C."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print(f"{prog}: error: the drivers need transformers "
              "(pip install 'paramgeom[train]')", file=sys.stderr)  # fmt: skip
        return 2
    try:
        return body()
    except DriverError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a failing environment the drivers did not name themselves
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"{prog}: error: {where}{what}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def run(driver: str, argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, and write the run folder; 0 on success, 2 on bad input."""
    parser = build_parser(driver)
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: _run(driver, args))


def _run(driver: str, args) -> int:
    from paramgeom.drivers import loop, models, projection, steps, teacher
    from paramgeom.drivers.task import ArithmeticTask

    _validate(args)
    if args.monitor_every:  # the monitor's defaults, recorded in run.json's config
        for dest, (_, default) in MONITOR_FLAGS.items():
            if getattr(args, dest) is None:
                setattr(args, dest, default)
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise DriverError(f"--device {args.device}: {str(exc).splitlines()[0]}") from None
    try:
        task = ArithmeticTask(digits=args.digits, eval_size=args.eval_size)
    except ValueError as exc:
        raise DriverError(f"task: {exc}") from None
    out = Path(args.out)
    save_steps = _save_steps(args)
    if args.project_grad_from is not None:
        ref_base, ref_ckpt, ref_step = projection.resolve_reference(
            Path(args.project_grad_from), args.project_at
        )
    need_teacher = _needs_teacher(driver, args)
    if need_teacher and args.model is not None and args.teacher is None:
        hint = " or --sft-target gold" if driver == "sft" else ""
        raise DriverError(f"{driver} needs a teacher: with --model, pass --teacher PATH{hint}")
    if args.model is not None:
        models.check_folder(args.model, "model")
    if need_teacher and args.teacher is not None:
        models.check_folder(args.teacher, "teacher")
    if args.model is None and args.model_size not in models.SIZES:
        raise DriverError(f"--model-size must be one of {', '.join(models.SIZES)}")
    if args.teacher_size is not None and args.teacher_size not in models.SIZES:
        raise DriverError(f"--teacher-size must be one of {', '.join(models.SIZES)}")
    _prepare_out(out, args.overwrite)
    cache = Path(args.cache) if args.cache else teacher.default_cache_dir()

    info: dict = {"driver": driver, "status": "running", "seed": args.seed,
                  "config": vars(args).copy()}  # fmt: skip
    info["config"]["save_steps"] = list(save_steps)
    info["versions"] = _versions()
    info["threads"] = torch.get_num_threads()
    info["cache"] = str(cache)

    # Student.
    if args.model is not None:
        student_dir = Path(args.model)
        info["student"] = {"source": "folder", "path": str(student_dir)}
    else:
        recipe = teacher.student_recipe(
            args.model_size, args.student_steps, args.student_target, args.teacher_steps
        )
        student_dir, rec = teacher.ensure_pretrained(recipe, task, cache, say)
        info["student"] = {"source": "embedded", "path": str(student_dir), "pretrain": rec}
    student, codec = models.load_model(student_dir, "model")
    _check_task_encodable(codec, task, "model")
    info["student"]["parameters"] = models.count_parameters(student)

    # Teacher.
    teacher_model = None
    if need_teacher:
        if args.teacher is not None:
            teacher_dir = Path(args.teacher)
            info["teacher"] = {"source": "folder", "path": str(teacher_dir)}
        else:
            size = args.teacher_size or args.model_size
            recipe = teacher.teacher_recipe(size, args.teacher_steps)
            teacher_dir, rec = teacher.ensure_pretrained(recipe, task, cache, say)
            info["teacher"] = {"source": "embedded", "path": str(teacher_dir), "pretrain": rec}
        teacher_model, t_codec = models.load_model(teacher_dir, "teacher")
        models.check_compatible(student, codec, teacher_model, t_codec)
        teacher_model.to(device).eval().requires_grad_(False)
        info["teacher"]["parameters"] = models.count_parameters(teacher_model)
    student.to(device)

    if teacher_model is not None:
        info["teacher"]["eval_accuracy"] = loop.evaluate(
            teacher_model, codec, task.eval_set(), args.max_new_tokens or task.max_new_tokens
        )
        say(f"teacher held-out accuracy {info['teacher']['eval_accuracy']:.3f}")

    # Functional sufficiency projection.
    projector = None
    if args.project_grad_from is not None:
        ref_model, _ = models.load_model(ref_ckpt, "--project-grad-from checkpoint")
        ref_state = ref_model.state_dict()
        if ref_base is not None:
            base_model, _ = models.load_model(ref_base, "--project-grad-from base")
            base_state = base_model.state_dict()
        else:
            base_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        projector, summary = projection.build_projector(
            student, base_state, ref_state, k=args.project_k, mode=args.project_mode,
            freeze_others=args.project_freeze_others, seed=args.seed,
        )  # fmt: skip
        start = student.state_dict()
        # dW is meant to be measured from the weights this run starts at; say when the
        # reference run started elsewhere (the projection is still well defined).
        matches = all(torch.equal(base_state[n].cpu(), start[n].cpu()) for n in projector.params)
        info["projection"] = {
            **summary, "reference": str(ref_ckpt), "reference_step": ref_step,
            "base": str(ref_base) if ref_base is not None else "model start",
            "base_matches_start": matches,
        }  # fmt: skip
        if summary["zero_updates"]:
            # A zero dW has no top-k subspace: the projector then uses an arbitrary one.
            print(f"warning: {len(summary['zero_updates'])} matrices have a zero reference "
                  f"update (e.g. {summary['zero_updates'][0]}); their subspace is arbitrary",
                  file=sys.stderr)  # fmt: skip
        say(f"projecting {summary['matrices']} matrices onto top-{args.project_k} subspaces "
            f"of {ref_ckpt}")  # fmt: skip

    # Objective.
    mnt = args.max_new_tokens or 0
    try:
        if driver == "sft":
            objective = steps.SFTStep(
                task, codec, batch=args.batch, source=args.sft_target, teacher=teacher_model,
                temperature=args.temperature, max_new_tokens=mnt, token_keep=args.token_keep,
            )  # fmt: skip
        else:
            objective = steps.PolicyStep(
                task, codec, prompts=args.prompts, samples=args.samples,
                opd_weight=args.mix_rlvr if driver == "opd" else 0.0,
                teacher=teacher_model, full_kl=getattr(args, "full_kl", False),
                token_keep=args.token_keep, off_policy=args.off_policy,
                is_clip=args.is_clip, temperature=args.temperature, max_new_tokens=mnt,
            )  # fmt: skip
    except ValueError as exc:
        raise DriverError(str(exc)) from None

    cfg = loop.LoopConfig(
        steps=args.steps, lr=args.lr, warmup=args.warmup, schedule=args.schedule,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, save_steps=save_steps,
        eval_every=args.eval_every, seed=args.seed, autocast_bf16=args.bf16_autocast,
    )  # fmt: skip
    monitor = None
    if args.monitor_every:
        from paramgeom.monitor import GeometryMonitor

        # Reference = the starting weights (checkpoint-0); records land in metrics.jsonl.
        try:
            monitor = GeometryMonitor(
                student, every=args.monitor_every, k=args.monitor_k, total_steps=args.steps,
                on_lock=args.monitor_action, trigger=MONITOR_TRIGGERS[args.monitor_trigger],
                overlock_rank=args.overlock_rank, overlock_fraction=args.overlock_fraction,
                perturb_scale=args.perturb_scale,
            )  # fmt: skip
        except ValueError as exc:
            raise DriverError(f"monitor: {exc}") from None
        info["monitor"] = {
            "every": args.monitor_every, "action": args.monitor_action,
            "trigger": monitor.config.trigger, "k": monitor.config.k,
            "overlock_rank": monitor.config.overlock_rank,
            "overlock_fraction": monitor.config.overlock_fraction,
            "perturb_scale": monitor.config.perturb_scale, "matrices": len(monitor.names),
            "reference_bytes": monitor.reference_bytes,
        }  # fmt: skip
    info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    loop.write_json(out / "run.json", info)
    say(f"{driver}: {args.steps} steps into {out}")
    try:
        result = loop.train(
            student, objective, cfg, task=task, codec=codec, out=out, projector=projector,
            log=say, checkpoint_extra={"driver": driver, "seed": args.seed}, monitor=monitor,
        )  # fmt: skip
    except DriverError as exc:
        # A failed write (full disk): what was saved stays (complete checkpoints, whole
        # metrics.jsonl lines); run.json says so if it can still be written.
        info.update(status="failed", error=str(exc),
                    finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))  # fmt: skip
        with contextlib.suppress(DriverError, OSError):
            info["checkpoints"] = loop.saved_steps(out)
            loop.write_json(out / "run.json", info)
        raise
    if monitor is not None:
        info["monitor"].update(
            lock_step=monitor.lock_step, over_locking_step=monitor.over_locking_step,
            action_step=monitor.action_step, stopped=monitor.should_stop,
            monitor_s=round(monitor.total_s, 3),
        )  # fmt: skip
        if monitor.should_stop:
            say(f"{driver}: the monitor stopped training at step {result.steps_done} "
                f"(action {args.monitor_action}, trigger {monitor.config.trigger})")  # fmt: skip
    info.update(
        status="done",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        steps_done=result.steps_done,
        checkpoints=result.checkpoints,
        evals=result.evals,
        final_eval_accuracy=result.final_accuracy,
        wall_s=round(result.wall_s, 2),
        step_s=round(result.step_s, 4),
    )
    loop.write_json(out / "run.json", info)
    say(
        f"{driver}: done, held-out accuracy {result.evals[0][1]:.3f} -> "
        f"{result.final_accuracy:.3f}, {result.step_s:.3f} s/step, wrote {out}"
    )
    return 0
