"""One training step's loss for each objective: data in, scalar loss and statistics out.

The shared loop (:mod:`paramgeom.drivers.loop`) calls an objective as
``loss, stats = objective(model, ctx)``; the two kinds here cover the paper's three
post-training methods (DESIGN.md "Drivers"):

- :class:`SFTStep`: cross-entropy on reference completions, gold answers or teacher samples.
- :class:`PolicyStep`: the student (or, off-policy, the teacher) samples ``samples``
  completions per prompt; OPD is ``opd_weight = 1``, RLVR ``opd_weight = 0`` and the paper's
  mixed objective anything between (``A = a A_OPD + (1 - a) A_RLVR``).

The formulas live in :mod:`paramgeom.drivers.objectives`; this module only wires data,
models and flags to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paramgeom.drivers import objectives as obj
from paramgeom.drivers.rollout import completion_logits, from_completions, sample
from paramgeom.drivers.task import ArithmeticTask, Codec, rewards

__all__ = ["PolicyStep", "SFTStep", "StepContext"]


@dataclass
class StepContext:
    """What a step may draw from: the step number, a CPU generator for problems and token
    selection, and a generator on the model's device for sampling."""

    step: int
    data_gen: torch.Generator
    sample_gen: torch.Generator
    device: torch.device


def _prompts(task: ArithmeticTask, codec: Codec, n: int, gen: torch.Generator):
    problems = task.sample(n, gen)
    return [codec.prompt_ids(p.prompt) for p in problems], [p.answer for p in problems]


@dataclass
class SFTStep:
    """SFT: ``L = -(1/T) sum_t w_t log pi(y_t)`` on ``batch`` reference completions per step.

    ``source="gold"`` uses the task's answers; ``"teacher"`` samples one completion per
    prompt from ``teacher`` at ``temperature`` (sequence-level distillation).
    """

    task: ArithmeticTask
    codec: Codec
    batch: int
    source: str = "gold"
    teacher: torch.nn.Module | None = None
    temperature: float = 1.0
    max_new_tokens: int = 0
    token_keep: float = 1.0

    def __post_init__(self) -> None:
        if self.source not in ("gold", "teacher"):
            raise ValueError(f"source must be 'gold' or 'teacher', got {self.source!r}")
        if self.source == "teacher" and self.teacher is None:
            raise ValueError("SFT on teacher samples needs a teacher")

    def __call__(self, model: torch.nn.Module, ctx: StepContext):
        prompts, answers = _prompts(self.task, self.codec, self.batch, ctx.data_gen)
        stats: dict[str, float] = {}
        if self.source == "gold":
            targets = [self.codec.completion_ids(a) for a in answers]
            ro = from_completions(prompts, targets, self.codec.pad_id).to(ctx.device)
        else:
            ro = sample(
                self.teacher, prompts, self.max_new_tokens or self.task.max_new_tokens,
                self.codec.eos_id, self.codec.pad_id, ctx.sample_gen, self.temperature,
            )  # fmt: skip
            stats["target_reward"] = float(rewards(ro.texts(self.codec), answers).mean())
        mask = ro.completion_mask
        num = float(mask.sum())
        w = obj.token_keep_weights(mask, self.token_keep, ctx.data_gen)
        logits = completion_logits(model, ro)
        loss = obj.sft_loss(logits, ro.completions, w, num)
        stats.update(tokens=num, kept_tokens=float((w > 0).sum()))
        return loss, stats


@dataclass
class PolicyStep:
    """OPD / RLVR / mixed policy-gradient step on ``prompts x samples`` rollouts.

    Parameters
    ----------
    opd_weight : float
        ``a`` in ``A = a A_OPD + (1 - a) A_RLVR``: 1 is OPD, 0 is RLVR (GRPO advantages).
    full_kl : bool
        OPD term as the exact full-vocabulary reverse KL loss instead of the sampled-token
        advantage (the RLVR part, if any, stays a policy gradient).
    token_keep : float
        Fraction rho of counted tokens kept (loss rescaled by ``T / kept``).
    off_policy : bool
        Rollouts are sampled from the teacher; policy-gradient terms are weighted by
        ``min(pi_s / pi_t, is_clip)`` per token.
    """

    task: ArithmeticTask
    codec: Codec
    prompts: int
    samples: int
    opd_weight: float = 1.0
    teacher: torch.nn.Module | None = None
    full_kl: bool = False
    token_keep: float = 1.0
    off_policy: bool = False
    is_clip: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.opd_weight <= 1.0:
            raise ValueError(f"opd_weight must be in [0, 1], got {self.opd_weight}")
        if self.needs_teacher and self.teacher is None:
            raise ValueError("this objective needs a teacher")
        if self.opd_weight < 1.0 and self.samples < 2:
            raise ValueError("RLVR advantages need >= 2 samples per prompt")

    @property
    def needs_teacher(self) -> bool:
        return self.opd_weight > 0.0 or self.off_policy

    def __call__(self, model: torch.nn.Module, ctx: StepContext):
        prompts, answers = _prompts(self.task, self.codec, self.prompts, ctx.data_gen)
        # Consecutive rows are one prompt's samples (the GRPO groups).
        prompts = [p for p in prompts for _ in range(self.samples)]
        answers = [a for a in answers for _ in range(self.samples)]
        behaviour = self.teacher if self.off_policy else model
        ro = sample(
            behaviour, prompts, self.max_new_tokens or self.task.max_new_tokens,
            self.codec.eos_id, self.codec.pad_id, ctx.sample_gen, self.temperature,
        )  # fmt: skip
        r = rewards(ro.texts(self.codec), answers).to(ctx.device)
        mask = ro.completion_mask
        num = float(mask.sum())
        w = obj.token_keep_weights(mask, self.token_keep, ctx.data_gen)
        logits = completion_logits(model, ro)
        logp = obj.token_logprobs(logits, ro.completions)
        stats = {"reward": float(r.mean()), "tokens": num, "kept_tokens": float((w > 0).sum())}

        t_logits = t_logp = None
        if self.teacher is not None and self.needs_teacher:
            with torch.no_grad():
                t_logits = completion_logits(self.teacher, ro)
                t_logp = obj.token_logprobs(t_logits, ro.completions)
            # Sampled-token reverse KL estimate, a cheap progress signal for every objective.
            stats["sampled_kl"] = float(((logp.detach() - t_logp) * mask).sum() / max(num, 1))

        is_w = None
        if self.off_policy:
            is_w = obj.importance_weights(logp, t_logp, self.is_clip)
            raw = torch.exp(logp.detach() - t_logp)
            stats["is_ratio"] = float((raw * mask).sum() / max(num, 1))
            stats["is_clipped"] = float(((raw > self.is_clip).float() * mask).sum() / max(num, 1))

        a = self.opd_weight
        a_rlvr = obj.grpo_advantages(r, self.samples) if a < 1.0 else torch.zeros_like(r)
        if self.full_kl and a > 0.0:
            loss = a * obj.kl_loss(obj.reverse_kl(logits, t_logits), w, num)
            if a < 1.0:
                adv = a_rlvr[:, None].expand_as(logp)
                loss = loss + (1 - a) * obj.policy_gradient_loss(logp, adv, w, num, is_w)
        else:
            a_opd = obj.opd_advantages(logp, t_logp) if a > 0.0 else torch.zeros_like(logp)
            adv = obj.mix_advantages(a_opd, a_rlvr, a)
            loss = obj.policy_gradient_loss(logp, adv, w, num, is_w)
        return loss, stats
