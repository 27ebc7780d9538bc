"""What a tensor name says: module type, layer, expert, and the key two checkpoints pair on.

DESIGN.md "Checkpoints": base and tuned names may differ by a wrapper prefix (``model.`` vs
none, ``module.`` from DDP, ``_orig_mod.`` from ``torch.compile``); mixture-of-experts
weights are stored per expert (``...experts.7.down_proj.weight``) or fused as 3-D stacks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "MODULE_TYPES",
    "PREFIX_RULE",
    "NameInfo",
    "pairing_key",
    "parse_name",
]

# Stripped from the front, in any order and repeatedly, before two names are compared.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

PREFIX_RULE = (
    "names are paired exactly when both checkpoints spell them the same; otherwise after "
    "removing leading wrapper prefixes ('module.', '_orig_mod.', 'model.') from both sides; "
    "a name that becomes ambiguous after removal is an error"
)

MODULE_TYPES = (
    "q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head", "norm", "expert",
    "router", "bias", "other",
)  # fmt: skip

# Last-component patterns, first match wins. Names follow Llama/Qwen/Mistral/DeepSeek
# (HF), GPT-2/NeoX and the Meta reference spellings.
_MODULE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (module, re.compile(pattern))
    for module, pattern in (
        ("norm", r"(^|\.)([a-z_]*norm[a-z_0-9]*|ln_\w+|ln_f)\.(weight|bias)$"),
        ("bias", r"\.bias$"),
        ("q", r"(^|\.)(q_proj|wq|query|q_a_proj|q_b_proj)\.weight$"),
        ("k", r"(^|\.)(k_proj|wk|key)\.weight$"),
        ("v", r"(^|\.)(v_proj|wv|value)\.weight$"),
        ("o", r"(^|\.)(o_proj|wo|out_proj|c_proj|dense)\.weight$"),
        ("gate", r"(^|\.)(gate_proj|w1|gate_up_proj)\.weight$"),
        ("up", r"(^|\.)(up_proj|w3|c_fc|dense_h_to_4h)\.weight$"),
        ("down", r"(^|\.)(down_proj|w2|dense_4h_to_h)\.weight$"),
        ("embed", r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in)\.weight$"),
        ("lm_head", r"(^|\.)(lm_head|embed_out|output)\.weight$"),
        ("router", r"(^|\.)(mlp|block_sparse_moe|moe)\.(gate|router)(\.weight)?$"),
    )
)
MODULE_PATTERN: dict[str, re.Pattern[str]] = dict(_MODULE_PATTERNS)
"""Module type -> the pattern a name must match to be of that type (necessary, not
sufficient: an earlier pattern, or the expert rules, may claim the name first)."""
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")
_FUSED_EXPERTS = re.compile(r"\.experts\.")


@dataclass(frozen=True)
class NameInfo:
    """Parsed tensor name: ``module`` (one of :data:`MODULE_TYPES`), ``layer`` (or None),
    ``expert`` (index for per-expert tensors, None otherwise) and ``stack`` (the expert stack:
    the name with the expert index removed; None outside experts)."""

    module: str
    layer: int | None
    expert: int | None
    stack: str | None


def pairing_key(name: str) -> str:
    """``name`` without its leading wrapper prefixes (see :data:`PREFIX_RULE`)."""
    if not name.startswith(WRAPPER_PREFIXES):  # most names: nothing to strip
        return name
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def parse_name(name: str, ndim: int = 2) -> NameInfo:
    """Module type, layer and expert of a tensor name (``ndim``: the stored tensor's rank;
    a 3-D tensor under ``experts`` is a fused ``[E, out, in]`` stack)."""
    layer_m = _LAYER.search(name)
    layer = int(layer_m.group(1)) if layer_m else None
    expert_m = _EXPERT.search(name)
    if expert_m:
        stack = name[: expert_m.start()] + ".experts." + name[expert_m.end() :]
        return NameInfo("expert", layer, int(expert_m.group(1)), stack)
    if ndim == 3 and _FUSED_EXPERTS.search(name):
        return NameInfo("expert", layer, None, name)
    return NameInfo(_module_of(_NUMBER.sub("0", name), ndim), layer, None, None)


# A dot-separated component of digits only (a layer or block index). No module pattern
# tells one such component from another (they name components with letters; ``\w`` and
# ``[a-z_0-9]`` stay inside a component), so names that differ only there have the same
# module type: the patterns run once per distinct spelling, not once per layer.
_NUMBER = re.compile(r"(?<![^.])[0-9]+(?![^.])")


@functools.lru_cache(maxsize=4096)
def _module_of(name: str, ndim: int) -> str:
    """Module type of a name that is not an expert's: the first pattern that matches."""
    for module, pattern in _MODULE_PATTERNS:
        if pattern.search(name):
            if module == "router" and ndim != 2:
                continue
            return module
    return "other"
