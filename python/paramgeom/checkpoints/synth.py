"""Synthetic Hugging Face-style checkpoints with a known update (``paramgeom synth``).

Tests and benchmarks need real checkpoint folders of any size without downloads.
:func:`write_pair` writes ``OUT/base/`` and ``OUT/tuned/`` (and, with ``steps``, a trajectory
``OUT/checkpoint-<s>/``), each a folder with ``config.json`` and ``model.safetensors`` or
``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``.

Everything is generated deterministically from ``SynthSpec.seed`` (one ``torch.Generator``
per tensor, seeded from the seed and the tensor's prefix-free name):

- base weights ~ N(0, 0.02^2); norm weights ~ 1 + N(0, 0.02^2); with ``base_decay = a >
  0`` column ``j`` of every base matrix (0-based, per expert) is scaled by ``(j + 1)^-a``,
  rescaled so that the mean square stays 0.02^2: singular values that fall about as
  ``i^-a``, as trained weights' do, where Gaussian ones have no gap anywhere; with
  ``base_spikes = N`` every base matrix (per expert) also gets ``N`` singular values far
  above the rest (spikes, as trained weights have): ``U diag(t) V^T`` on orthonormal ``U``,
  ``V`` (QR of Gaussian draws), ``t`` from ``spike_size`` to half of it (linearly) times
  ``0.02 (sqrt(m) + sqrt(n))``, the largest singular value of the Gaussian draw;
- the tuned checkpoint is ``W1 = W0 + dW`` with ``dW = U diag(s) V^T`` per matrix (per
  expert for fused 3-D stacks), ``U``, ``V`` orthonormal (QR of Gaussian matrices) and
  ``r = min(update_rank, m, n)`` singular values ``s_i ∝ 2^(-i/4)`` scaled so that
  ``||dW||_F = update_scale * 0.02 * sqrt(m n)`` (about ``update_scale * ||W0||_F``);
- a changed norm gets a dense update of relative size ``update_scale``;
- a fraction ``1 - changed_fraction`` of the matrices (and of the norms) is left
  bitwise unchanged (when base and tuned share a dtype);
- trajectory checkpoint ``s`` holds ``W0 + (s / max(steps)) dW`` with the same ``U, s, V``
  directions; the last one equals ``tuned`` byte for byte.

``W0 + dW`` is formed in float32 from the base's stored values (after the base dtype's
rounding) and rounded once to the tuned dtype, so ``tuned - base`` is ``dW`` plus the tuned
dtype's rounding only. FP8 (``dtype="fp8"``): attention, MLP and expert matrices are stored
``float8_e4m3fn`` with DeepSeek block scales ``<name>_scale_inv`` (see :mod:`.fp8`); the tuned
FP8 checkpoint is requantised with fresh scales, so its difference also carries FP8
requantisation noise (larger than a 1e-2 update: realistic, but not low rank).

Tensor names (``P`` = prefix, default ``model.``; ``lm_head.weight`` never takes the prefix)::

    P embed_tokens.weight                      [vocab, hidden]
    P layers.L.input_layernorm.weight          [hidden]
    P layers.L.self_attn.{q,k,v,o}_proj.weight [heads*hd | kv*hd | hidden, ...]
    P layers.L.post_attention_layernorm.weight [hidden]
    llama: P layers.L.mlp.{gate,up}_proj.weight [inter, hidden], down_proj.weight [hidden, inter]
    moe:   P layers.L.mlp.gate.weight          [E, hidden]   (router)
      split: P layers.L.mlp.experts.E.{gate,up}_proj.weight [inter, hidden],
             P layers.L.mlp.experts.E.down_proj.weight       [hidden, inter]
      fused: P layers.L.mlp.experts.{gate,up}_proj           [E, inter, hidden],
             P layers.L.mlp.experts.down_proj                 [E, hidden, inter]
    P norm.weight                              [hidden]
    lm_head.weight                             [vocab, hidden]  (absent when tied)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from paramgeom.checkpoints.fp8 import dequantize_blocks, quantize_blocks, scale_name, scale_shape
from paramgeom.checkpoints.synth_cli import DTYPE_NAMES, add_parser, parse_size, size_arg

__all__ = [
    "DTYPES",
    "SynthPair",
    "SynthSpec",
    "add_parser",
    "parse_size",
    "size_arg",
    "spec_nbytes",
    "target_bytes_spec",
    "tensor_names",
    "write_checkpoint",
    "write_pair",
]

_TORCH_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn)
DTYPES: dict[str, torch.dtype] = dict(zip(DTYPE_NAMES, _TORCH_DTYPES, strict=True))
_HF_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16"}
_INIT_STD = 0.02
SPIKE_SIZE_MAX = 1e6
"""Largest ``spike_size``: past it the spikes' sum with the bulk loses the bulk entirely to
float32 rounding (and far past it, overflows), which no trained weight does."""
_FP8_BLOCK = 128

Progress = Callable[[int], None]


@dataclass
class SynthSpec:
    """What to generate. See the module docstring for names and the update model."""

    arch: str = "llama"
    """"llama" (dense) or "moe"."""
    hidden: int = 256
    layers: int = 2
    intermediate: int = 688
    """MLP width (per expert for "moe")."""
    vocab: int = 1024
    heads: int = 4
    kv_heads: int = 2
    experts: int = 0
    """Experts per layer for "moe" (0 means 4); must be 0 for "llama"."""
    expert_layout: str = "split"
    """"split" (one 2-D tensor per expert) or "fused" (3-D [E, out, in] stacks)."""
    dtype: str = "bf16"
    """"bf16", "fp16", "fp32" or "fp8" (block-scaled matrices, other tensors bf16)."""
    tie_embeddings: bool = False
    shards: int = 1
    update_rank: int = 4
    update_scale: float = 1e-2
    base_decay: float = 0.0
    """Power ``a`` of the base matrices' column scales ``(j + 1)^-a`` (0: plain Gaussian)."""
    base_spikes: int = 0
    """Singular values added far above the rest of every base matrix (0: none)."""
    spike_size: float = 30.0
    """The largest spike, in units of the Gaussian draw's largest singular value."""
    changed_fraction: float = 1.0
    seed: int = 0
    prefix: str = "model."

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "moe"):
            raise ValueError(f"arch must be 'llama' or 'moe', got {self.arch!r}")
        if self.arch == "moe" and self.experts == 0:
            self.experts = 4
        if self.arch == "llama" and self.experts:
            raise ValueError("experts needs arch='moe'")
        if self.expert_layout not in ("split", "fused"):
            raise ValueError(
                f"expert_layout must be 'split' or 'fused', got {self.expert_layout!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("hidden", "layers", "intermediate", "vocab", "heads", "kv_heads", "shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.experts < 0:
            raise ValueError(f"experts must be >= 0, got {self.experts}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.update_rank < 0:
            raise ValueError(f"update_rank must be >= 0, got {self.update_rank}")
        if not (self.update_scale >= 0 and math.isfinite(self.update_scale)):
            raise ValueError(f"update_scale must be finite and >= 0, got {self.update_scale}")
        if not (self.base_decay >= 0 and math.isfinite(self.base_decay)):
            raise ValueError(f"base_decay must be finite and >= 0, got {self.base_decay}")
        if self.base_spikes < 0:
            raise ValueError(f"base_spikes must be >= 0, got {self.base_spikes}")
        if not (0 < self.spike_size <= SPIKE_SIZE_MAX):
            raise ValueError(
                f"spike_size must be in (0, {SPIKE_SIZE_MAX:g}], got {self.spike_size}"
            )
        if not (0.0 <= self.changed_fraction <= 1.0):
            raise ValueError(f"changed_fraction must be in [0, 1], got {self.changed_fraction}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass
class SynthPair:
    """What :func:`write_pair` wrote, and the ground truth of the update."""

    root: Path
    base: Path
    tuned: Path
    spec: SynthSpec
    checkpoints: dict[int, Path] = field(default_factory=dict)
    """Trajectory: step -> folder (``checkpoint-<s>``), ascending; empty without steps."""
    updates: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    """Base name of each matrix (``name[e]`` for expert e of a fused stack) -> (rank,
    singular values of dW before dtype rounding, descending float64). Unchanged: (0, [])."""
    changed: list[str] = field(default_factory=list)
    """Base names of the tensors that receive an update (matrices, stacks and norms)."""
    tuned_names: dict[str, str] = field(default_factory=dict)
    """Base name -> tuned name (differs when ``tuned_prefix`` differs)."""
    nbytes: dict[str, int] = field(default_factory=dict)
    """Folder name -> bytes of its safetensors files."""


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Entry:
    key: str  # name without prefix; "lm_head.weight" never takes one
    shape: tuple[int, ...]
    kind: str  # embed, lm_head, norm, matrix, router, stack
    fp8: bool  # stored as FP8 with block scales when dtype == "fp8"

    def name(self, prefix: str) -> str:
        return self.key if self.kind == "lm_head" else prefix + self.key


def _plan(spec: SynthSpec) -> list[_Entry]:
    h, inter, hd = spec.hidden, spec.intermediate, spec.head_dim
    out = [_Entry("embed_tokens.weight", (spec.vocab, h), "embed", False)]
    for L in range(spec.layers):
        p = f"layers.{L}."
        out.append(_Entry(p + "input_layernorm.weight", (h,), "norm", False))
        for proj, shape in (
            ("q_proj", (spec.heads * hd, h)),
            ("k_proj", (spec.kv_heads * hd, h)),
            ("v_proj", (spec.kv_heads * hd, h)),
            ("o_proj", (h, spec.heads * hd)),
        ):
            out.append(_Entry(f"{p}self_attn.{proj}.weight", shape, "matrix", True))
        out.append(_Entry(p + "post_attention_layernorm.weight", (h,), "norm", False))
        mlp = (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter)))
        if spec.arch == "llama":
            for proj, shape in mlp:
                out.append(_Entry(f"{p}mlp.{proj}.weight", shape, "matrix", True))
            continue
        E = spec.experts
        out.append(_Entry(p + "mlp.gate.weight", (E, h), "router", False))
        if spec.expert_layout == "split":
            for e in range(E):
                for proj, shape in mlp:
                    out.append(_Entry(f"{p}mlp.experts.{e}.{proj}.weight", shape, "matrix", True))
        else:
            for proj, shape in mlp:
                out.append(_Entry(f"{p}mlp.experts.{proj}", (E, *shape), "stack", True))
    out.append(_Entry("norm.weight", (h,), "norm", False))
    if not spec.tie_embeddings:
        out.append(_Entry("lm_head.weight", (spec.vocab, h), "lm_head", False))
    return out


def tensor_names(spec: SynthSpec, dtype: str | None = None, prefix: str | None = None) -> dict:
    """Name -> (shape, torch dtype) of every tensor a checkpoint of ``spec`` holds, in order."""
    dtype = dtype or spec.dtype
    prefix = spec.prefix if prefix is None else prefix
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for e in _plan(spec):
        for name, shape, dt in _stored_layout(e, dtype, prefix):
            out[name] = (shape, dt)
    return out


def _stored_layout(e: _Entry, dtype: str, prefix: str) -> list[tuple[str, tuple, torch.dtype]]:
    name = e.name(prefix)
    if dtype == "fp8":
        if e.fp8:
            return [
                (name, e.shape, DTYPES["fp8"]),
                (scale_name(name), scale_shape(e.shape, _FP8_BLOCK), torch.float32),
            ]
        return [(name, e.shape, torch.bfloat16)]
    return [(name, e.shape, DTYPES[dtype])]


def _entry_nbytes(e: _Entry, dtype: str) -> int:
    return sum(math.prod(s) * dt.itemsize for _, s, dt in _stored_layout(e, dtype, ""))


def spec_nbytes(spec: SynthSpec, dtype: str | None = None) -> int:
    """Bytes of tensor data in one checkpoint of ``spec`` (headers and config excluded)."""
    return sum(_entry_nbytes(e, dtype or spec.dtype) for e in _plan(spec))


# --------------------------------------------------------------------------- generation


def _generator(spec_seed: int, *parts: object) -> torch.Generator:
    digest = hashlib.blake2b(repr((spec_seed, *parts)).encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def _singular_values(spec: SynthSpec, m: int, n: int) -> np.ndarray:
    r = min(spec.update_rank, m, n)
    w = 2.0 ** (-np.arange(r, dtype=np.float64) / 4.0)
    target = spec.update_scale * _INIT_STD * math.sqrt(m * n)
    return target * w / np.linalg.norm(w) if r else w


def _changed_keys(spec: SynthSpec, plan: list[_Entry]) -> set[str]:
    out: set[str] = set()
    mats = [e.key for e in plan if e.kind != "norm"] if spec.update_rank > 0 else []
    norms = [e.key for e in plan if e.kind == "norm"]
    for group, label in ((mats, "matrices"), (norms, "norms")):
        k = round(spec.changed_fraction * len(group))
        if k:
            perm = torch.randperm(len(group), generator=_generator(spec.seed, "changed", label))
            out.update(group[i] for i in perm[:k].tolist())
    return out


def _base_values(e: _Entry, spec: SynthSpec) -> torch.Tensor:
    g = _generator(spec.seed, "w0", e.key)
    x = torch.randn(e.shape, generator=g, dtype=torch.float32).mul_(_INIT_STD)
    if e.kind == "norm":
        x.add_(1.0)
    elif spec.base_decay > 0:
        n = e.shape[-1]
        scale = torch.arange(1, n + 1, dtype=torch.float64) ** -spec.base_decay
        scale /= scale.square().mean().sqrt()  # the mean square of x is kept
        x.mul_(scale.to(torch.float32))
    if e.kind != "norm" and x.dim() >= 2 and spec.base_spikes > 0:
        _add_spikes(x, spec, _generator(spec.seed, "spikes", e.key))
    return x


def _add_spikes(x: torch.Tensor, spec: SynthSpec, g: torch.Generator) -> None:
    """``x`` (a matrix, or a stack of them) += ``U diag(t) V^T`` per matrix: ``base_spikes``
    singular values from ``spike_size`` to half of it times ``0.02 (sqrt(m) + sqrt(n))``."""
    m, n = x.shape[-2:]
    r = min(spec.base_spikes, m, n)
    edge = _INIT_STD * (math.sqrt(m) + math.sqrt(n))
    t = spec.spike_size * edge * torch.linspace(1.0, 0.5, r, dtype=torch.float64)
    for mat in x.reshape(-1, m, n):
        u = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
        mat.add_(((u * t) @ v.T).to(torch.float32))


def _store(x: torch.Tensor, e: _Entry, dtype: str, name: str) -> dict[str, torch.Tensor]:
    if dtype == "fp8":
        if e.fp8:
            q, s = quantize_blocks(x, DTYPES["fp8"], _FP8_BLOCK)
            return {name: q, scale_name(name): s}
        return {name: x.to(torch.bfloat16)}
    return {name: x.to(DTYPES[dtype]).contiguous()}


def _values(stored: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    t = stored[name]
    if t.dtype == DTYPES["fp8"]:
        return dequantize_blocks(t, stored[scale_name(name)], _FP8_BLOCK)
    return t.to(torch.float32)


def _add_update(x: torch.Tensor, e: _Entry, spec: SynthSpec, factor: float) -> None:
    """x += factor * dW in place (x float32, the base's stored values)."""
    if e.kind == "norm":
        g = _generator(spec.seed, "dnorm", e.key)
        d = torch.randn(e.shape, generator=g, dtype=torch.float64)
        d *= spec.update_scale * math.sqrt(d.numel()) / float(d.norm())
        x.add_(d.to(torch.float32), alpha=factor)
        return
    mats = [(x, e.key)] if x.dim() == 2 else [(x[i], f"{e.key}[{i}]") for i in range(x.shape[0])]
    for mat, key in mats:
        m, n = mat.shape
        s = _singular_values(spec, m, n)
        r = len(s)
        if not r:
            continue
        g = _generator(spec.seed, "dw", key)
        U = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64)).Q
        V = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
        us = (U * torch.from_numpy(s)).to(torch.float32)
        mat.addmm_(us, V.T.to(torch.float32), alpha=factor)


def _entry_tensors(
    e: _Entry,
    spec: SynthSpec,
    dtype: str,
    prefix: str,
    factor: float,
    changed: bool,
) -> dict[str, torch.Tensor]:
    """The stored tensors of one entry for a checkpoint at update ``factor`` (0: base)."""
    base = _store(_base_values(e, spec), e, spec.dtype, e.name(prefix))
    if factor == 0.0 or not changed:
        if dtype == spec.dtype:
            return base
        changed = False
    x = _values(base, e.name(prefix))
    del base
    if changed:
        _add_update(x, e, spec, factor)
    return _store(x, e, dtype, e.name(prefix))


# --------------------------------------------------------------------------- writing


def _assign_shards(sizes: Sequence[int], shards: int) -> list[int]:
    """Contiguous split of units into ``shards`` groups of about equal bytes, none empty."""
    n = len(sizes)
    if shards > n:
        raise ValueError(f"{shards} shards but only {n} tensors")
    total = max(1, sum(sizes))
    out: list[int] = []
    k, acc, count = 0, 0, 0
    for i, s in enumerate(sizes):
        if (
            count
            and k < shards - 1
            and (acc + s / 2 > (k + 1) * total / shards or n - i == shards - 1 - k)
        ):
            k, count = k + 1, 0
        out.append(k)
        acc += s
        count += 1
    return out


def _shard_file(k: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def _clean_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file() and (
            re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", p.name)
            or p.name in ("model.safetensors.index.json", "config.json")
        ):
            p.unlink()


def _config(spec: SynthSpec, dtype: str, role: str) -> dict:
    cfg: dict = {
        "architectures": ["MixtralForCausalLM" if spec.arch == "moe" else "LlamaForCausalLM"],
        "model_type": "mixtral" if spec.arch == "moe" else "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_embeddings,
        "torch_dtype": _HF_DTYPE[dtype],
    }
    if spec.arch == "moe":
        cfg.update(
            num_local_experts=spec.experts,
            num_experts=spec.experts,
            num_experts_per_tok=min(2, spec.experts),
            moe_intermediate_size=spec.intermediate,
        )
    if dtype == "fp8":
        cfg["quantization_config"] = {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [_FP8_BLOCK, _FP8_BLOCK],
        }
    cfg["paramgeom_synth"] = {"role": role, **asdict(spec), "dtype": dtype}
    return cfg


def _save_shards(
    folder: Path,
    units: list[tuple[int, Callable[[], dict[str, torch.Tensor]]]],
    shards: int,
    progress: Progress | None,
) -> int:
    """Write units (bytes, producer) into shards, producing each shard's tensors just in time."""
    from safetensors.torch import save_file

    assign = _assign_shards([b for b, _ in units], shards)
    n = assign[-1] + 1 if assign else 1
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(n):
        fname = _shard_file(k, n)
        tensors: dict[str, torch.Tensor] = {}
        for (nbytes, produce), a in zip(units, assign, strict=True):
            if a != k:
                continue
            tensors.update(produce())
            if progress is not None:
                progress(nbytes)
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        del tensors
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def write_checkpoint(
    folder: str | Path,
    tensors: dict[str, torch.Tensor],
    spec: SynthSpec | None = None,
    shards: int | None = None,
    *,
    role: str = "checkpoint",
) -> Path:
    """Write ``tensors`` as a Hugging Face-style folder (config.json from ``spec``).

    ``shards`` (default ``spec.shards``) > 1 splits them into ``model-0000i-of-0000N``
    files of about equal bytes, in the given order, with ``model.safetensors.index.json``;
    a weight and its ``_scale_inv`` stay in the same shard. Stale ``model*.safetensors``,
    index and config files in the folder are removed first. Returns the folder.
    """
    spec = spec or SynthSpec()
    folder = Path(folder)
    _clean_folder(folder)
    groups: list[list[str]] = []
    seen: set[str] = set()
    for name in tensors:
        if name in seen:
            continue
        group = [name] + [s for s in (scale_name(name),) if s in tensors and s not in seen]
        seen.update(group)
        groups.append(group)
    units = [
        (
            sum(tensors[n].numel() * tensors[n].element_size() for n in g),
            (lambda g=g: {n: tensors[n].contiguous() for n in g}),
        )
        for g in groups
    ]
    _save_shards(folder, units, shards or spec.shards, None)
    present = {t.dtype for t in tensors.values()}
    dtype = next((k for k in ("fp8", "bf16", "fp16", "fp32") if DTYPES[k] in present), spec.dtype)
    (folder / "config.json").write_text(json.dumps(_config(spec, dtype, role), indent=2) + "\n")
    return folder


def _write_generated(
    folder: Path,
    spec: SynthSpec,
    plan: list[_Entry],
    dtype: str,
    prefix: str,
    factor: float,
    changed: set[str],
    role: str,
    progress: Progress | None,
) -> int:
    _clean_folder(folder)
    units = [
        (
            _entry_nbytes(e, dtype),
            (
                lambda e=e: _entry_tensors(
                    e, spec, dtype, prefix, factor, factor != 0.0 and e.key in changed
                )
            ),
        )
        for e in plan
    ]
    total = _save_shards(folder, units, spec.shards, progress)
    (folder / "config.json").write_text(json.dumps(_config(spec, dtype, role), indent=2) + "\n")
    return total


def write_pair(
    out_dir: str | Path,
    spec: SynthSpec,
    tuned_prefix: str | None = None,
    tuned_dtype: str | None = None,
    steps: Sequence[int] = (),
    *,
    progress: Progress | None = None,
) -> SynthPair:
    """Write ``out_dir/base``, ``out_dir/tuned`` and ``out_dir/checkpoint-<s>`` per step.

    ``tuned_prefix`` (default ``spec.prefix``) names the tuned (and trajectory) tensors;
    ``tuned_dtype`` (default ``spec.dtype``) stores them in another dtype. ``progress``
    is called with the byte count of each tensor group as it is generated. Memory: one
    shard's tensors plus a few copies of the tensor being generated.
    """
    tuned_dtype = tuned_dtype or spec.dtype
    if tuned_dtype not in DTYPES:
        raise ValueError(f"tuned_dtype must be one of {', '.join(DTYPES)}, got {tuned_dtype!r}")
    tuned_prefix = spec.prefix if tuned_prefix is None else tuned_prefix
    step_list = sorted({int(s) for s in steps})
    if step_list and step_list[0] <= 0:
        raise ValueError(f"steps must be positive, got {step_list[0]}")
    plan = _plan(spec)
    if spec.shards > len(plan):
        raise ValueError(f"{spec.shards} shards but only {len(plan)} tensors")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    changed = _changed_keys(spec, plan)

    pair = SynthPair(root=out, base=out / "base", tuned=out / "tuned", spec=spec)
    for e in plan:
        name = e.name(spec.prefix)
        pair.tuned_names[name] = e.name(tuned_prefix)
        if e.key in changed:
            pair.changed.append(name)
        if e.kind == "norm":
            continue
        mats = [(name, e.shape)] if e.kind != "stack" else [
            (f"{name}[{i}]", e.shape[1:]) for i in range(e.shape[0])
        ]  # fmt: skip
        for key, (m, n) in mats:
            s = _singular_values(spec, m, n) if e.key in changed else np.zeros(0)
            pair.updates[key] = (len(s), s)

    pair.nbytes["base"] = _write_generated(
        pair.base, spec, plan, spec.dtype, spec.prefix, 0.0, changed, "base", progress
    )
    pair.nbytes["tuned"] = _write_generated(
        pair.tuned, spec, plan, tuned_dtype, tuned_prefix, 1.0, changed, "tuned", progress
    )
    for s in step_list:
        folder = out / f"checkpoint-{s}"
        pair.checkpoints[s] = folder
        if s == step_list[-1]:
            _clean_folder(folder)
            for f in sorted(pair.tuned.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, folder / f.name)
            cfg = json.loads((folder / "config.json").read_text())
            cfg["paramgeom_synth"]["role"] = f"checkpoint-{s}"
            (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            if progress is not None:
                progress(pair.nbytes["tuned"])
            nbytes = pair.nbytes["tuned"]
        else:
            nbytes = _write_generated(
                folder,
                spec,
                plan,
                tuned_dtype,
                tuned_prefix,
                s / step_list[-1],
                changed,
                f"checkpoint-{s}",
                progress,
            )
        pair.nbytes[folder.name] = nbytes
    return pair


# --------------------------------------------------------------------------- sizing


def _heads_for(hidden: int) -> tuple[int, int]:
    hd = 64 if hidden <= 1024 else 128
    heads = max(1, hidden // hd)
    while hidden % heads:
        heads -= 1
    kv = max(d for d in range(1, max(1, heads // 4) + 1) if heads % d == 0)
    return heads, kv


def target_bytes_spec(total_bytes: int, arch: str = "llama", **kw) -> SynthSpec:
    """A spec whose checkpoints hold about ``total_bytes`` of tensor data each.

    Chooses ``hidden`` (a multiple of 128 unless given) and ``layers`` (unless given) so the
    size is close (within a few percent when a layer is small against the total) with a
    plausible shape (about one layer per 128 of width); intermediate = 2.6875 x hidden
    (rounded to 16), vocab 32000 from 256 MB on (else 1024). Other fields pass through.
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    hidden = kw.pop("hidden", None)
    layers = kw.pop("layers", None)
    kw.setdefault("vocab", 32000 if total_bytes >= 256_000_000 else 1024)

    def make(h: int, L: int) -> SynthSpec:
        heads, kv = _heads_for(h)
        fields = {
            "heads": heads,
            "kv_heads": kv,
            "intermediate": max(16, round(h * 2.6875 / 16) * 16),
        }
        fields.update(kw)
        return SynthSpec(arch=arch, hidden=h, layers=L, **fields)

    best: tuple[tuple, SynthSpec] | None = None
    for h in [hidden] if hidden else range(128, 16384 + 1, 128):
        b1 = spec_nbytes(make(h, 1))
        per = spec_nbytes(make(h, 2)) - b1
        fixed = b1 - per
        L = layers or max(1, round((total_bytes - fixed) / per))
        err = abs(fixed + per * L - total_bytes) / total_bytes
        # Close enough (5%) first, then the most plausible depth for the width.
        score = (err > 0.05, err if err > 0.05 else 0.0, abs(math.log(L / max(1.0, h / 128))))
        if best is None or score < best[0]:
            best = (score, make(h, L))
    assert best is not None
    return best[1]


# --------------------------------------------------------------------------- command line


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


_SPEC_ARGS = ("hidden", "layers", "intermediate", "vocab", "heads", "kv_heads", "experts")


def _cmd_synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    overrides = {k: getattr(args, k) for k in _SPEC_ARGS if getattr(args, k) is not None}
    overrides.update(
        dtype=args.dtype,
        shards=args.shards,
        expert_layout=args.expert_layout,
        tie_embeddings=args.tie_embeddings,
        update_rank=args.update_rank,
        update_scale=args.update_scale,
        base_decay=args.base_decay,
        base_spikes=args.base_spikes,
        spike_size=args.spike_size,
        changed_fraction=args.changed_fraction,
        seed=args.seed,
    )
    try:
        if args.size is not None:
            spec = target_bytes_spec(args.size, arch=args.arch, **overrides)
        else:
            spec = SynthSpec(arch=args.arch, **overrides)
        tuned_dtype = args.tuned_dtype or spec.dtype
        n_ckpt = 2 + len(set(args.steps or ()))
        total = spec_nbytes(spec) + (n_ckpt - 1) * spec_nbytes(spec, tuned_dtype)
        console = Console(stderr=True, quiet=args.quiet)
        with Progress(
            TextColumn("paramgeom synth"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("synth", total=total)
            pair = write_pair(
                args.out,
                spec,
                tuned_prefix=args.tuned_prefix,
                tuned_dtype=args.tuned_dtype,
                steps=args.steps or (),
                progress=lambda n: bar.advance(task, n),
            )
    except ValueError as exc:
        print(f"paramgeom synth: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"paramgeom synth: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    shape = (
        f"{spec.arch} hidden={spec.hidden} layers={spec.layers} intermediate={spec.intermediate} "
        f"vocab={spec.vocab}"
        + (f" experts={spec.experts} ({spec.expert_layout})" if spec.arch == "moe" else "")
    )
    update = f"rank-{spec.update_rank} update x{spec.update_scale:g}"
    decay = f", base columns x (j+1)^-{spec.base_decay:g}" if spec.base_decay else ""
    if spec.base_spikes:
        decay += f", {spec.base_spikes} base spikes up to {spec.spike_size:g}x the bulk"
    print(f"wrote {pair.root}: {shape}, {update}{decay}")
    for name, nbytes in pair.nbytes.items():
        folder = pair.root / name
        files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".safetensors"))
        print(f"  {folder}  {_human(nbytes)} in {len(files)} file(s)")
    return 0
