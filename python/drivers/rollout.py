"""Batches of prompt + completion token ids: sampling from a causal LM, and reference data.

A :class:`Rollout` is a ``(B, P + G)`` block of ids: prompts left-padded to a common length
``P`` (so every completion starts at column ``P``) and completions right-padded to ``G``.
``completion_mask`` marks the completion tokens that count: each one up to and including the
first ``<eos>``; everything after is padding. Position ids count real tokens only, so a
left-padded prompt sees the same positions as an unpadded one.

Sampling runs the model with its KV cache, one token per step, from a seeded
``torch.Generator`` (reproducible on CPU); the training objectives recompute the
log-probabilities of the sampled ids with gradients (:func:`completion_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paramgeom.drivers.models import cache_kwarg
from paramgeom.drivers.task import Codec

__all__ = ["Rollout", "completion_logits", "from_completions", "left_pad", "sample"]


@dataclass
class Rollout:
    """Prompt + completion ids of a batch.

    Attributes
    ----------
    input_ids : (B, P + G) int64
    attention_mask : (B, P + G) int64, 0 on the prompts' left padding only
    prompt_len : int, P
    completion_mask : (B, G) float32, 1 on counted completion tokens
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    completion_mask: torch.Tensor

    @property
    def completions(self) -> torch.Tensor:
        """``(B, G)`` completion ids (padding where ``completion_mask`` is 0)."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def position_ids(self) -> torch.Tensor:
        return position_ids(self.attention_mask)

    def texts(self, codec: Codec) -> list[str]:
        """Each completion's text up to its ``<eos>``."""
        out = []
        for ids, m in zip(self.completions.tolist(), self.completion_mask.tolist(), strict=True):
            kept = [t for t, keep in zip(ids, m, strict=True) if keep and t != codec.eos_id]
            out.append(codec.decode(kept))
        return out

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.prompt_len,
            self.completion_mask.to(device),
        )


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting attended tokens only (0 on left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of ``seqs`` left-padded to the longest; ``mask`` is 1 on real tokens."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad needs a non-empty list of non-empty sequences")
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(seqs), n), dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s, dtype=torch.int64)
        mask[i, n - len(s) :] = 1
    return ids, mask


def from_completions(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> Rollout:
    """A rollout of given completions (gold or teacher text), every token counted."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    p_ids, p_mask = left_pad(prompts, pad_id)
    g = max(len(c) for c in completions)
    c_ids = torch.full((len(prompts), g), pad_id, dtype=torch.int64)
    c_mask = torch.zeros((len(prompts), g), dtype=torch.float32)
    for i, c in enumerate(completions):
        c_ids[i, : len(c)] = torch.tensor(c, dtype=torch.int64)
        c_mask[i, : len(c)] = 1.0
    ids = torch.cat([p_ids, c_ids], 1)
    mask = torch.cat([p_mask, torch.ones_like(c_ids)], 1)
    return Rollout(ids, mask, p_ids.shape[1], c_mask)


def _past(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Rollout:
    """Sample one completion per prompt from ``model`` (``temperature == 0``: greedy).

    Stops a row at its first ``eos_id`` (counted in ``completion_mask``) and the batch when
    every row has stopped or ``max_new_tokens`` were drawn. Sampling is at ``temperature``;
    the objectives score the ids under the untempered policy.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompts, pad_id)
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    pos = position_ids(p_mask)
    b = p_ids.shape[0]
    kw = cache_kwarg(model)
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=pos, use_cache=True)
    mask = p_mask
    last_pos = pos[:, -1:]
    tokens, counted = [], []
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        counted.append(~done)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        done = done | (nxt == eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], 1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last_pos,
            use_cache=True,
            **{kw: _past(out)},
        )
    model.train(was_training)
    c_ids = torch.stack(tokens, 1)
    c_mask = torch.stack(counted, 1).float()
    ids = torch.cat([p_ids, c_ids], 1)
    full_mask = torch.cat([p_mask, torch.ones_like(c_ids)], 1)
    return Rollout(ids, full_mask, p_ids.shape[1], c_mask)


def completion_logits(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """``(B, G, V)`` logits of ``model`` at the positions that predict the completion ids
    (one forward over the whole block; gradients flow when enabled)."""
    ids = rollout.input_ids
    out = model(
        input_ids=ids,
        attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids,
        use_cache=False,
    )
    p = rollout.prompt_len
    return out.logits[:, p - 1 : ids.shape[1] - 1, :]
