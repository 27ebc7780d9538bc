"""Pair the tensors of a base and a tuned checkpoint by name, with the rules the report states.

DESIGN.md "Checkpoints": names that differ by a wrapper prefix, tied embeddings (reported
once), FP8 weights with their ``weight_scale_inv`` block scales (the scale travels with its
weight, it is not a tensor of its own), non-float buffers (skipped and listed), and
missing or extra tensors (listed; an error with ``--strict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.fp8 import scale_shape
from paramgeom.checkpoints.naming import (
    MODULE_PATTERN,
    PREFIX_RULE,
    NameInfo,
    pairing_key,
    parse_name,
)

__all__ = ["Pairing", "PairedTensor", "TensorRef", "pair_checkpoints", "RULES"]

SCALE_SUFFIX = "_scale_inv"
FLOAT_DTYPES = (
    torch.float64, torch.float32, torch.bfloat16, torch.float16,
    torch.float8_e4m3fn, torch.float8_e5m2,
)  # fmt: skip
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

RULES = {
    "prefix": PREFIX_RULE,
    "tied_embeddings": (
        "when config.json says tie_word_embeddings, lm_head.weight is not reported (the "
        "embedding is, once); when only one side stores lm_head.weight, the other side's "
        "embedding stands in for it"
    ),
    "dtype": (
        "every figure is computed on both checkpoints rounded to bf16 (round to nearest even), "
        "the paper's rule: an fp32 base against a bf16 tuned checkpoint compares "
        "bf16(base) with the tuned values"
    ),
    "fp8": (
        "float8 weights with a weight_scale_inv tensor are dequantised per 128x128 block "
        "(q * scale_inv, in fp32) inside the read, then rounded to bf16 like every other input"
    ),
    "non_float": "integer and boolean buffers are skipped (listed in the notes)",
}


@dataclass(frozen=True)
class TensorRef:
    """One side of a pair: the stored tensor and, for block-scaled FP8, its scale tensor."""

    name: str
    info: object  # paramgeom.checkpoints.reader.TensorInfo
    scale: object | None = None

    @property
    def nbytes(self) -> int:
        return int(self.info.nbytes) + (int(self.scale.nbytes) if self.scale is not None else 0)


@dataclass(frozen=True)
class PairedTensor:
    """A base tensor and the tuned tensor it is compared with."""

    name: str  # the tuned checkpoint's spelling
    base: TensorRef
    tuned: TensorRef
    meta: NameInfo
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.base.nbytes + self.tuned.nbytes


@dataclass
class Pairing:
    pairs: list[PairedTensor]
    missing_in_tuned: list[str] = field(default_factory=list)  # base names with no partner
    missing_in_base: list[str] = field(default_factory=list)  # tuned names with no partner
    tied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tied(cfg: dict) -> bool:
    if "tie_word_embeddings" in cfg:
        return bool(cfg["tie_word_embeddings"])
    text = cfg.get("text_config")
    return bool(text.get("tie_word_embeddings")) if isinstance(text, dict) else False


def _check_scale(info, scale) -> None:
    """A block scale must fit its weight, checked from the headers before any data is read
    (DESIGN.md: a bad input fails when opened, not after earlier tensors were computed)."""
    if info.dtype not in FP8_DTYPES:
        raise CheckpointError(
            info.file, info.name, f"has a {SCALE_SUFFIX} block scale but is {info.dtype}, not fp8"
        )
    if not scale.dtype.is_floating_point or scale.dtype in FP8_DTYPES:
        raise CheckpointError(
            scale.file, scale.name, f"block scale must be float32-like, got {scale.dtype}"
        )
    want = scale_shape(info.shape) if len(info.shape) >= 2 else None
    if want is None or tuple(scale.shape) != want:
        raise CheckpointError(
            scale.file, scale.name, f"block scale of shape {tuple(scale.shape)} does not fit "
            f"weight {info.name} of shape {tuple(info.shape)} (128x128 blocks need "
            f"{want if want is not None else 'a weight of at least 2 dimensions'})",
        )  # fmt: skip


def _refs(ckpt, side: str, notes: list[str]) -> dict[str, TensorRef]:
    """Pairing key -> TensorRef for one checkpoint (scales attached, non-floats dropped)."""
    tensors = ckpt.tensors
    refs: dict[str, TensorRef] = {}
    spelled: dict[str, str] = {}
    skipped = []
    for name, info in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            weight = name[: -len(SCALE_SUFFIX)]
            if weight not in tensors:
                raise CheckpointError(info.file, name, "block scale without its weight tensor")
            continue
        if info.dtype not in FLOAT_DTYPES:
            skipped.append(name)
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            _check_scale(info, scale)
        key = pairing_key(name)
        if key in refs:
            raise CheckpointError(
                info.file, name, f"ambiguous after prefix removal: also {spelled[key]!r}"
            )
        spelled[key] = name
        refs[key] = TensorRef(name, info, scale)
    if skipped:
        notes.append(f"{side}: skipped {len(skipped)} non-float tensor(s): {', '.join(skipped)}")
    other = getattr(ckpt, "skipped", None) or {}
    if other:
        by_reason: dict[str, list[str]] = {}
        for name, why in other.items():
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            shown = ", ".join(names[:5]) + (
                f", ... ({len(names) - 5} more)" if len(names) > 5 else ""
            )
            notes.append(f"{side}: skipped {len(names)} key(s), {why}: {shown}")
    return refs


def _find(refs: dict[str, TensorRef], module: str) -> str | None:
    """The first key that :func:`parse_name` gives ``module``. Only names that ``module``'s
    own pattern matches can be it, so only those are parsed in full (parsing all 50,000
    names of a checkpoint four times took seconds)."""
    pattern = MODULE_PATTERN[module]
    for key, ref in refs.items():
        if pattern.search(key) and parse_name(key, len(ref.info.shape)).module == module:
            return key
    return None


def pair_checkpoints(base, tuned) -> Pairing:
    """Pair ``base`` and ``tuned`` (:class:`~paramgeom.checkpoints.reader.Checkpoint`) by name.

    Pairs come in the tuned checkpoint's shard order. A shape mismatch is a
    :class:`CheckpointError` (before anything is computed); non-float tensors are skipped and
    listed in the notes, so a float tensor facing a non-float one is listed as missing.
    """
    notes: list[str] = []
    b = _refs(base, "base", notes)
    t = _refs(tuned, "tuned", notes)
    tied: list[str] = []
    lm_b, lm_t = _find(b, "lm_head"), _find(t, "lm_head")
    em_b, em_t = _find(b, "embed"), _find(t, "embed")
    if _tied(base.config or {}) or _tied(tuned.config or {}):
        for refs, key in ((b, lm_b), (t, lm_t)):
            if key is not None:
                refs.pop(key)
        if em_t is not None:
            tied.append(f"{t[em_t].name} (lm_head tied to it: reported once)")
    elif lm_t is not None and lm_b is None and em_b is not None:
        b[lm_t] = b[em_b]
        tied.append(f"tuned {t[lm_t].name} compared with base {b[em_b].name} (base is tied)")
    elif lm_b is not None and lm_t is None and em_t is not None:
        t[lm_b] = t[em_t]
        tied.append(f"base {b[lm_b].name} compared with tuned {t[em_t].name} (tuned is tied)")

    pairs: list[PairedTensor] = []
    for key, tr in t.items():
        br = b.get(key)
        if br is None:
            continue
        tshape, bshape = tuple(tr.info.shape), tuple(br.info.shape)
        if tshape != bshape:
            raise CheckpointError(
                tr.info.file, tr.name, f"shape {tshape} differs from the base's {bshape}"
                f" ({br.info.file})",
            )  # fmt: skip
        if (br.scale is None) != (tr.scale is None):
            has, lacks = ("base", "tuned") if br.scale is not None else ("tuned", "base")
            raise CheckpointError(
                tr.info.file, tr.name, f"block-scaled FP8 on one side only: the {has} "
                f"checkpoint stores {SCALE_SUFFIX} for it, the {lacks} does not ({br.info.file}"
                " is the base); comparing raw FP8 codes with dequantised values would be wrong",
            )  # fmt: skip
        meta = parse_name(tr.name, len(tshape))
        pairs.append(PairedTensor(tr.name, br, tr, meta, tshape))
    missing_in_tuned = sorted(ref.name for key, ref in b.items() if key not in t)
    missing_in_base = sorted(ref.name for key, ref in t.items() if key not in b)
    return Pairing(pairs, missing_in_tuned, missing_in_base, tied, notes)
