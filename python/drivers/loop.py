"""The one training loop shared by the SFT, OPD and RLVR drivers (and teacher training).

DESIGN.md "Drivers": fp32 master weights, AdamW, gradient-norm clipping, bf16 checkpoints
as Hugging Face safetensors folders at chosen steps (``checkpoint-<step>/``, the starting
weights as ``checkpoint-0/``). Every run writes ``metrics.jsonl`` (one JSON object per
step: loss, objective statistics, learning rate, gradient norm, step time; held-out
``eval_accuracy`` on evaluation steps) beside its checkpoints; the drivers add
``run.json``.

Reproducibility: all randomness comes from ``torch.manual_seed(seed)`` and two generators
seeded from ``seed`` (problems and token selection on CPU, sampling on the model's device),
so a CPU run repeated with the same seed writes bit-identical checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paramgeom.drivers.models import save_model
from paramgeom.drivers.rollout import sample
from paramgeom.drivers.steps import StepContext
from paramgeom.drivers.storage import write_error, writing
from paramgeom.drivers.task import ArithmeticTask, Codec, Problem, rewards
from paramgeom.monitor import log_items

__all__ = [
    "LoopConfig",
    "TrainResult",
    "evaluate",
    "saved_steps",
    "seed_everything",
    "train",
    "write_json",
]


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def saved_steps(run_dir: Path) -> list[int]:
    """Steps of the ``checkpoint-<step>`` folders a run wrote into ``run_dir``, ascending
    (``checkpoint-0`` included). Only complete folders carry that name: one being written,
    or left half-written by a killed run, is the hidden ``.checkpoint-<step>.tmp-<pid>``
    (:func:`paramgeom.drivers.storage.atomic_folder`), which this never lists."""
    return sorted(
        int(m.group(1))
        for d in Path(run_dir).iterdir()
        if d.is_dir() and (m := _CHECKPOINT.fullmatch(d.name))
    )


@dataclass(frozen=True)
class LoopConfig:
    """Optimiser, schedule, checkpoint and evaluation settings of one run.

    ``lr`` is the peak learning rate: linear warm-up over ``warmup`` steps, then constant
    or cosine decay to ``min_lr_ratio * lr`` at step ``decay_steps`` (default: the last
    step; a longer horizon lets a run stop early on the schedule of a longer one).
    ``save_steps`` lists the steps written as ``checkpoint-<step>`` (``checkpoint-0`` is
    always written when the loop has an output folder). Evaluation runs at step 0, every
    ``eval_every`` steps and at the end; with ``stop_accuracy`` set, training stops at the
    first evaluation that reaches it.
    """

    steps: int
    lr: float
    warmup: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    decay_steps: int | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    save_steps: tuple[int, ...] = ()
    eval_every: int = 50
    eval_batch: int = 512
    stop_accuracy: float | None = None
    seed: int = 0
    autocast_bf16: bool = False
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.warmup < 0 or self.eval_every < 0:
            raise ValueError("warmup and eval_every must be >= 0")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        bad = [s for s in self.save_steps if not 1 <= s <= self.steps]
        if bad:
            raise ValueError(f"save steps {bad} are outside 1..{self.steps}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` for the update that produces step ``step + 1``."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = max(1, (self.decay_steps or self.steps) - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class TrainResult:
    """What a run did: steps taken, evaluations ``(step, accuracy)``, checkpoint steps,
    wall time and mean time per optimiser step."""

    steps_done: int
    evals: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    step_s: float = 0.0

    @property
    def final_accuracy(self) -> float | None:
        return self.evals[-1][1] if self.evals else None


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (model initialisation, any library code
    that draws from them)."""
    random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as JSON through a fsynced temporary file and a rename (never half a
    file); a failed write raises :class:`DriverError` naming ``path`` and keeps the old
    ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(obj, indent=2, default=str) + "\n"
    try:
        with writing(path):
            with tmp.open("w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class _JsonLines:
    """``metrics.jsonl``: one JSON object per line, unbuffered. A failed write (full disk)
    cuts the file back to its last whole line and raises :class:`DriverError` naming it,
    so every line already written stays readable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        with writing(path):
            self.file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by close())

    def write(self, rec: dict) -> None:
        data = memoryview((json.dumps(rec) + "\n").encode())
        try:
            while data:
                data = data[self.file.write(data) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.file.fileno(), self.size)
            raise write_error(self.path, exc) from None
        self.size = self.file.tell()

    def close(self) -> None:
        try:
            with writing(self.path):
                os.fsync(self.file.fileno())
        finally:
            self.file.close()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    codec: Codec,
    problems: list[Problem],
    max_new_tokens: int,
    batch_size: int = 512,
) -> float:
    """Exact-answer accuracy of greedy completions on ``problems`` (the held-out set)."""
    hits = 0.0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        prompts = [codec.prompt_ids(p.prompt) for p in chunk]
        ro = sample(model, prompts, max_new_tokens, codec.eos_id, codec.pad_id, temperature=0)
        hits += float(rewards(ro.texts(codec), [p.answer for p in chunk]).sum())
    return hits / len(problems)


Objective = Callable[[torch.nn.Module, StepContext], tuple[torch.Tensor, dict]]


def train(
    model: torch.nn.Module,
    objective: Objective,
    cfg: LoopConfig,
    *,
    task: ArithmeticTask,
    codec: Codec,
    out: Path | None = None,
    projector=None,
    log: Callable[[str], None] | None = None,
    checkpoint_extra: dict | None = None,
    monitor=None,
) -> TrainResult:
    """Train ``model`` in place with ``objective`` for ``cfg.steps`` AdamW steps.

    Per step: ``loss, stats = objective(model, ctx)``; backward; ``projector.before_step()``
    (the functional-sufficiency projection, :mod:`paramgeom.drivers.projection`); clip the
    global gradient norm to ``cfg.grad_clip``; AdamW step; ``projector.after_step()``.
    With ``out`` set, writes ``checkpoint-0`` before the first step, ``checkpoint-<s>`` for
    ``s`` in ``cfg.save_steps``, and ``metrics.jsonl``. With a ``monitor``
    (:class:`paramgeom.GeometryMonitor`), ``monitor.step(step)`` runs after each optimiser
    step (outside ``step_s``) and its figures join that step's record as ``geometry/*``;
    when it sets ``monitor.should_stop`` that step is the last: evaluated, saved as
    ``checkpoint-<step>``, and ``steps_done`` is that step.
    """
    device = next(model.parameters()).device
    seed_everything(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
    eval_set = task.eval_set()
    result = TrainResult(steps_done=0)
    metrics = None
    if out is not None:
        out = Path(out)
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
        metrics = _JsonLines(out / "metrics.jsonl")
    say = log or (lambda _msg: None)
    extra = dict(checkpoint_extra or {})

    def save(step: int) -> None:
        if out is None:
            return
        save_model(model, out / f"checkpoint-{step}", codec, extra={**extra, "step": step})
        result.checkpoints.append(step)

    def run_eval(step: int) -> float:
        acc = evaluate(model, codec, eval_set, task.max_new_tokens, cfg.eval_batch)
        result.evals.append((step, acc))
        return acc

    def emit(rec: dict) -> None:
        if metrics is not None:
            metrics.write(rec)

    t_start = time.perf_counter()
    step_time = 0.0
    try:
        acc0 = run_eval(0)
        emit({"step": 0, "eval_accuracy": acc0})
        say(f"step 0: eval accuracy {acc0:.3f}")
        save(0)
        model.train()
        for step in range(1, cfg.steps + 1):
            t0 = time.perf_counter()
            ctx = StepContext(step, data_gen, sample_gen, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                loss, stats = objective(model, ctx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if projector is not None:
                projector.before_step()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            if projector is not None:
                projector.after_step()
            dt = time.perf_counter() - t0
            step_time += dt
            result.steps_done = step
            rec = {"step": step, "loss": float(loss.detach()), **stats, "lr": lr_now,
                   "grad_norm": float(gnorm), "step_s": round(dt, 4)}  # fmt: skip
            monitor_stop = False
            if monitor is not None:
                mrec = monitor.step(step)
                if mrec is not None:
                    rec.update(log_items(mrec))
                monitor_stop = monitor.should_stop
            last = step == cfg.steps or monitor_stop
            is_eval = last or (cfg.eval_every and step % cfg.eval_every == 0)
            if is_eval:
                rec["eval_accuracy"] = run_eval(step)
            emit(rec)
            if is_eval or step % max(1, cfg.log_every) == 0:
                say(_line(rec))
            stop = (
                is_eval
                and cfg.stop_accuracy is not None
                and rec["eval_accuracy"] >= cfg.stop_accuracy
            ) or monitor_stop
            if step in cfg.save_steps or stop:
                save(step)
            if stop:
                break
    except BaseException:
        if metrics is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                metrics.close()
        raise
    if metrics is not None:
        metrics.close()
    result.wall_s = time.perf_counter() - t_start
    result.step_s = step_time / max(1, result.steps_done)
    return result


def _line(rec: dict) -> str:
    keys = ("loss", "reward", "target_reward", "sampled_kl", "is_ratio", "grad_norm",
            "eval_accuracy")  # fmt: skip
    parts = [f"{k} {rec[k]:.4g}" for k in keys if k in rec]
    return f"step {rec['step']}: " + ", ".join(parts)
