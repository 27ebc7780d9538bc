"""Losses and advantages of SFT, OPD and RLVR as pure functions on tensors.

DESIGN.md "Drivers" and arXiv 2606.07082 (Geometry of On-Policy Distillation), with a
plain-Python reference (``*_ref``, float64 loops over nested lists) beside each function;
the tests compare the two and both against hand-computed values.

Shapes: ``B`` sequences, ``G`` completion positions, ``V`` vocabulary. ``mask`` (B, G) is 1
on counted completion tokens; ``T = mask.sum()`` is their number. Every loss is a
token-level mean over the batch, ``L = (1/T) sum_t w_t l_t``, where the weights ``w`` are the
mask itself or, under token sparsification, :func:`token_keep_weights` (kept tokens weighted
``T / kept``). Advantages are constants (no gradient flows through them).

- SFT: ``l_t = -log pi(y_t)`` on reference completions (teacher samples or gold).
- OPD (sampled-token reverse KL): the student samples ``a_t``;
  ``A_t = -(log pi_s(a_t) - log pi_t(a_t))`` in the policy-gradient loss
  ``l_t = -A_t log pi_s(a_t)``, whose expected gradient is that of
  ``KL(pi_s || pi_t)`` per token. Full-vocabulary option: ``l_t = KL(pi_s(.|c_t) || pi_t(.|c_t))``
  summed over the vocabulary, differentiated exactly.
- RLVR (GRPO-style): one advantage per sequence, the reward normalised within its group of
  samples of the same prompt, ``A = (r - mean_g r) / (std_g r + eps)`` (sample std, as in
  GRPO, Shao et al. 2024, arXiv 2402.03300), shared by all its tokens; no KL penalty.
- Mixing (paper's objective composition): ``A = a A_OPD + (1 - a) A_RLVR``.
- Off-policy rollouts from a behaviour policy ``mu`` (the teacher): each token's term is
  weighted by the truncated importance ratio ``min(pi_s(a_t) / mu(a_t), c)`` (constant),
  as in IMPALA's V-trace truncation (Espeholt et al. 2018, rho-bar = c).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "grpo_advantages",
    "grpo_advantages_ref",
    "importance_weights",
    "importance_weights_ref",
    "kl_loss",
    "mix_advantages",
    "mix_advantages_ref",
    "opd_advantages",
    "opd_advantages_ref",
    "policy_gradient_loss",
    "policy_gradient_loss_ref",
    "reverse_kl",
    "reverse_kl_ref",
    "sft_loss",
    "sft_loss_ref",
    "token_keep_weights",
    "token_logprobs",
    "token_logprobs_ref",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # Softmax in at least fp32: bf16/fp16 logits lose the small probabilities that the
    # KL and the importance ratios depend on; float64 stays float64.
    return x if x.dtype == torch.float64 else x.float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[tokens]``: (B, G, V), (B, G) -> (B, G), float32 (float64 for
    float64 logits)."""
    return torch.log_softmax(_upcast(logits), -1).gather(-1, tokens[..., None]).squeeze(-1)


def sft_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, num_tokens: float
) -> torch.Tensor:
    """SFT cross-entropy ``L = -(1/T) sum_t w_t log pi(y_t)`` (scalar, differentiable)."""
    return -(weights * token_logprobs(logits, targets)).sum() / num_tokens


def opd_advantages(logp_student: torch.Tensor, logp_teacher: torch.Tensor) -> torch.Tensor:
    """OPD's per-token advantage ``A_t = -(log pi_s(a_t) - log pi_t(a_t))`` (sampled-token
    reverse KL, DESIGN.md "Drivers"), detached."""
    return -(logp_student - logp_teacher).detach()


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO group-normalised advantages ``(r - mean_g) / (std_g + eps)`` of ``rewards`` (B,),
    where consecutive runs of ``group_size`` entries are the samples of one prompt and
    ``std_g`` is the sample (n - 1) standard deviation. A group whose rewards are all equal
    gets advantage 0."""
    if group_size < 2:
        raise ValueError(f"GRPO needs >= 2 samples per prompt, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of {group_size} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    g = _upcast(rewards).view(-1, group_size)
    adv = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    return adv.view(-1).detach()


def mix_advantages(a_opd: torch.Tensor, a_rlvr: torch.Tensor, alpha: float) -> torch.Tensor:
    """``A_t = alpha A_OPD_t + (1 - alpha) A_RLVR`` with the sequence-level RLVR advantage
    (B,) broadcast over the tokens of ``a_opd`` (B, G)."""
    return alpha * a_opd + (1.0 - alpha) * a_rlvr[:, None]


def importance_weights(
    logp_student: torch.Tensor, logp_behaviour: torch.Tensor, clip: float
) -> torch.Tensor:
    """Truncated per-token importance ratios ``min(exp(log pi_s - log mu), clip)``, detached."""
    return torch.exp(logp_student - logp_behaviour).clamp(max=clip).detach()


def policy_gradient_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    num_tokens: float,
    is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L = -(1/T) sum_t w_t rho_t A_t log pi_s(a_t)`` with ``rho_t`` the importance weights
    (1 on-policy). Its gradient is the REINFORCE estimate; at ``rho = 1`` it equals the
    gradient of the PPO/GRPO ratio objective evaluated at the sampling policy."""
    terms = weights * advantages.detach() * logp
    if is_weights is not None:
        terms = terms * is_weights.detach()
    return -terms.sum() / num_tokens


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary reverse KL per position,
    ``KL_t = sum_v pi_s(v) (log pi_s(v) - log pi_t(v))``: (B, G, V) x2 -> (B, G), differentiable
    in the student's logits (the teacher's are detached)."""
    ls = torch.log_softmax(_upcast(student_logits), -1)
    lt = torch.log_softmax(_upcast(teacher_logits).detach(), -1)
    return (ls.exp() * (ls - lt)).sum(-1)


def kl_loss(kl: torch.Tensor, weights: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """``L = (1/T) sum_t w_t KL_t`` (full-vocabulary OPD)."""
    return (weights * kl).sum() / num_tokens


def token_keep_weights(
    mask: torch.Tensor, rho: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Token sparsification (arXiv 2606.07082, robustness study): keep
    ``kept = max(1, round(rho T))`` of the ``T`` counted tokens, uniformly without
    replacement, and weight each kept token ``T / kept`` (0 elsewhere), so that
    ``(1/T) sum_t w_t l_t`` is the mean of the kept terms, an unbiased estimate of the
    full loss. ``rho >= 1`` returns ``mask`` itself (float). ``generator`` is a CPU
    generator."""
    if not rho > 0.0:
        raise ValueError(f"token-keep fraction must be > 0, got {rho}")
    maskf = mask.float()
    if rho >= 1.0:
        return maskf
    idx = maskf.flatten().nonzero().squeeze(1)
    total = idx.numel()
    if total == 0:
        return maskf
    kept = max(1, round(rho * total))
    choice = torch.randperm(total, generator=generator)[:kept].to(idx.device)
    w = torch.zeros_like(maskf).flatten()
    w[idx[choice]] = total / kept
    return w.view_as(maskf)


# ---------------------------------------------------------------------------------------
# plain references: nested Python lists, float64 loops; the semantics in their simplest form


def _log_softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def token_logprobs_ref(logits: list, tokens: list) -> list[list[float]]:
    """Reference of :func:`token_logprobs`."""
    return [
        [_log_softmax_row(lrow)[tok] for lrow, tok in zip(lseq, tseq, strict=True)]
        for lseq, tseq in zip(logits, tokens, strict=True)
    ]


def sft_loss_ref(logits: list, targets: list, weights: list, num_tokens: float) -> float:
    """Reference of :func:`sft_loss`."""
    lp = token_logprobs_ref(logits, targets)
    total = 0.0
    for lrow, wrow in zip(lp, weights, strict=True):
        for lpt, w in zip(lrow, wrow, strict=True):
            total += -w * lpt
    return total / num_tokens


def opd_advantages_ref(logp_student: list, logp_teacher: list) -> list[list[float]]:
    """Reference of :func:`opd_advantages`."""
    return [
        [-(s - t) for s, t in zip(sr, tr, strict=True)]
        for sr, tr in zip(logp_student, logp_teacher, strict=True)
    ]


def grpo_advantages_ref(rewards: list[float], group_size: int, eps: float = 1e-6) -> list[float]:
    """Reference of :func:`grpo_advantages`."""
    out = []
    for start in range(0, len(rewards), group_size):
        g = rewards[start : start + group_size]
        mean = sum(g) / len(g)
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / (len(g) - 1))
        out.extend((r - mean) / (std + eps) for r in g)
    return out


def mix_advantages_ref(a_opd: list, a_rlvr: list[float], alpha: float) -> list[list[float]]:
    """Reference of :func:`mix_advantages`."""
    return [
        [alpha * a + (1 - alpha) * r for a in row] for row, r in zip(a_opd, a_rlvr, strict=True)
    ]


def importance_weights_ref(logp_student: list, logp_behaviour: list, clip: float) -> list:
    """Reference of :func:`importance_weights`."""
    return [
        [min(math.exp(s - b), clip) for s, b in zip(sr, br, strict=True)]
        for sr, br in zip(logp_student, logp_behaviour, strict=True)
    ]


def policy_gradient_loss_ref(
    logp: list, advantages: list, weights: list, num_tokens: float, is_weights: list | None = None
) -> float:
    """Reference of :func:`policy_gradient_loss`."""
    total = 0.0
    for i, row in enumerate(logp):
        for t, lpt in enumerate(row):
            rho = 1.0 if is_weights is None else is_weights[i][t]
            total += -weights[i][t] * rho * advantages[i][t] * lpt
    return total / num_tokens


def reverse_kl_ref(student_logits: list, teacher_logits: list) -> list[list[float]]:
    """Reference of :func:`reverse_kl`."""
    out = []
    for sseq, tseq in zip(student_logits, teacher_logits, strict=True):
        row = []
        for srow, trow in zip(sseq, tseq, strict=True):
            ls, lt = _log_softmax_row(srow), _log_softmax_row(trow)
            row.append(sum(math.exp(a) * (a - b) for a, b in zip(ls, lt, strict=True)))
        out.append(row)
    return out
