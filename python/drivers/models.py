"""Small Llama-style causal LMs and Hugging Face model folders.

DESIGN.md "Drivers": the embedded default builds small Llama-style models from a config
(no download); any Hugging Face causal LM folder works in their place. Training keeps fp32
master weights; folders are written as bf16 safetensors (``save_pretrained`` with a bf16
state dict) together with the tokenizer, so ``paramgeom diff`` and ``from_pretrained`` both
read them.

Sizes (vocabulary of the char tokenizer, 15)::

    tiny   hidden 128, 4 layers, 4 heads, MLP 384     ~0.86M parameters (trains in minutes
                                                     on 2 CPU cores)
    small  hidden 256, 6 layers, 4 heads, MLP 768     ~5.1M
    base   hidden 512, 8 layers, 8 heads, MLP 1536    ~27M
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from paramgeom.drivers.errors import DriverError
from paramgeom.drivers.storage import WRITE_ERRORS, atomic_folder, write_error, writing
from paramgeom.drivers.task import TOKENIZER_FILE, CharTokenizer, Codec

__all__ = [
    "SIZES",
    "HFCodec",
    "ModelSize",
    "build_model",
    "check_compatible",
    "check_folder",
    "count_parameters",
    "llama_config",
    "load_codec",
    "load_model",
    "save_model",
]


@dataclass(frozen=True)
class ModelSize:
    """Shape of a Llama-style decoder (``transformers.LlamaConfig`` fields)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int = 128


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden=128, layers=4, heads=4, intermediate=384),
    "small": ModelSize(hidden=256, layers=6, heads=4, intermediate=768),
    "base": ModelSize(hidden=512, layers=8, heads=8, intermediate=1536),
}


def llama_config(size: str, codec: CharTokenizer):
    """``LlamaConfig`` of a named size for ``codec``'s vocabulary; untied embeddings and the
    Llama default initialiser (normal, std 0.02), so weights sit at the scale the paper's
    unchanged-fraction rule is usually applied to."""
    from transformers import LlamaConfig

    if size not in SIZES:
        raise DriverError(f"--model-size must be one of {', '.join(SIZES)}, got {size!r}")
    s = SIZES[size]
    return LlamaConfig(
        vocab_size=codec.vocab_size,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=s.max_positions,
        initializer_range=0.02,
        pad_token_id=codec.pad_id,
        bos_token_id=codec.bos_id,
        eos_token_id=codec.eos_id,
        tie_word_embeddings=False,
    )


def build_model(size: str, codec: CharTokenizer, seed: int) -> torch.nn.Module:
    """A freshly initialised fp32 ``LlamaForCausalLM`` of ``size``; the initialisation draws
    from torch's global generator seeded with ``seed`` (reproducible on CPU)."""
    from transformers import LlamaForCausalLM

    config = llama_config(size, codec)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------
# tokenizers of Hugging Face folders


class HFCodec:
    """:class:`~paramgeom.drivers.task.Codec` over a Hugging Face tokenizer.

    Prompts are encoded with the tokenizer's special tokens (BOS where it adds one);
    completions without, followed by ``eos_token_id``. Padding uses ``pad_token_id``, or
    ``eos_token_id`` when the tokenizer has none (padding is masked everywhere).
    """

    def __init__(self, tokenizer, source: str = "") -> None:
        if tokenizer.eos_token_id is None:
            raise DriverError(f"tokenizer of {source or 'the model'} has no eos token")
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else int(pad)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def completion_ids(self, text: str) -> list[int]:
        return [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.eos_id]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def fingerprint(self) -> str:
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        h = hashlib.sha256(json.dumps([vocab, self.eos_id, self.pad_id]).encode())
        return "hf:" + h.hexdigest()[:16]

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


def load_codec(folder: Path, role: str = "model") -> Codec:
    """The tokenizer saved in a model folder: the char tokenizer when the folder has
    ``paramgeom_tokenizer.json``, else the Hugging Face tokenizer files."""
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file():
        try:
            return CharTokenizer.load(folder)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise DriverError(f"{role} {folder}: bad {TOKENIZER_FILE}: {exc}") from None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError variously
        raise DriverError(f"{role} {folder}: no usable tokenizer ({_first_line(exc)})") from None
    return HFCodec(tok, str(folder))


# ---------------------------------------------------------------------------------------
# folders


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _quiet_transformers() -> None:
    # Progress bars and load reports from transformers would break the drivers' one-line
    # error contract and flood logs; the drivers report what they load themselves.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def check_folder(folder: Path | str, role: str = "model") -> Path:
    """``folder`` as a Path if it looks like a Hugging Face model folder (exists, has
    ``config.json``); otherwise :class:`DriverError` naming ``role`` and the folder. Cheap:
    the drivers check every given folder before training anything."""
    folder = Path(folder)
    if not folder.exists():
        raise DriverError(f"{role} folder not found: {folder}")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise DriverError(f"{role} {folder} is not a Hugging Face model folder (no config.json)")
    return folder


def load_model(folder: Path | str, role: str = "model") -> tuple[torch.nn.Module, Codec]:
    """A causal LM and its tokenizer from a Hugging Face folder, as fp32 master weights.

    Raises :class:`DriverError` (one line naming ``role`` and the folder) when the folder is
    missing, has no ``config.json``, is not a causal LM, has unreadable weights, or has a
    tokenizer larger than the model's vocabulary.
    """
    folder = check_folder(folder, role)
    _quiet_transformers()
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder))
    except Exception as exc:  # ValueError (not a causal LM), OSError (no weights), ...
        raise DriverError(f"cannot load {role} from {folder}: {_first_line(exc)}") from None
    # from_pretrained may load the folder's own dtype ("auto" in transformers 5); bf16 to
    # fp32 is exact, so the master weights start at the saved values.
    model = model.float()
    codec = load_codec(folder, role)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if codec.vocab_size > vocab:
        raise DriverError(
            f"{role} {folder}: tokenizer has {codec.vocab_size} tokens but the model's "
            f"vocabulary has {vocab} rows"
        )
    return model, codec


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_model(
    model: torch.nn.Module,
    folder: Path | str,
    codec: Codec,
    dtype: torch.dtype = torch.bfloat16,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder with ``dtype`` safetensors (the fp32 master
    weights are left untouched) and ``codec``'s tokenizer files.

    Tied weights stay tied (one stored tensor). ``config.json`` records ``dtype`` so that
    ``from_pretrained(dtype="auto")`` gets the stored precision. ``extra`` (JSON) goes to
    ``paramgeom_checkpoint.json`` beside the weights.

    The folder is complete or absent (:func:`paramgeom.drivers.storage.atomic_folder`):
    everything is written into a hidden sibling ``.<name>.tmp-<pid>``, fsynced and renamed
    to ``folder`` (replacing a folder of that name). A failed write (full disk, ...) raises
    :class:`DriverError` naming the file, as ``folder / name``, and leaves nothing behind.
    """
    _quiet_transformers()
    folder = Path(folder)
    converted: dict[int, torch.Tensor] = {}
    state = {}
    for name, t in model.state_dict().items():
        # Convert each storage once so that tied parameters keep sharing memory and
        # save_pretrained stores them once.
        key = t.data_ptr()
        if key not in converted:
            converted[key] = t.detach().to(dtype=dtype, device="cpu").contiguous()
        state[name] = converted[key]
    # transformers 4.x needs safe_serialization=True for safetensors; 5.x always writes them
    # and has no such argument.
    params = inspect.signature(model.save_pretrained).parameters
    kw = {"safe_serialization": True} if "safe_serialization" in params else {}
    with atomic_folder(folder) as tmp:
        try:
            model.save_pretrained(str(tmp), state_dict=state, **kw)
        except WRITE_ERRORS as exc:
            raise write_error(folder / _failed_file(tmp, exc, "model.safetensors"), exc) from None
        with writing(folder / "config.json"):
            cfg_path = tmp / "config.json"
            cfg = json.loads(cfg_path.read_text())
            # transformers 5 writes "dtype", 4.x "torch_dtype"; both name the model's fp32.
            keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
            for k in keys:
                cfg[k] = _dtype_name(dtype)
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        try:
            codec.save(tmp)
        except WRITE_ERRORS as exc:
            raise write_error(folder / _failed_file(tmp, exc, ""), exc) from None
        if extra is not None:
            with writing(folder / "paramgeom_checkpoint.json"):
                text = json.dumps(extra, indent=1) + "\n"
                (tmp / "paramgeom_checkpoint.json").write_text(text)
    return folder


def _failed_file(tmp: Path, exc: BaseException, weights: str) -> str:
    """Path, relative to ``tmp``, of the file a library writer failed on: the error's own
    file name, the weights file for a safetensors error (``weights``), else the newest file
    in ``tmp`` (the one being written; "" when there is none)."""
    filename = getattr(exc, "filename", None)
    if filename:
        try:
            return str(Path(filename).resolve().relative_to(tmp.resolve()))
        except ValueError:
            return str(filename)
    if not isinstance(exc, OSError) and weights:
        return weights
    files = [p for p in tmp.rglob("*") if p.is_file()]
    if not files:
        return ""
    return str(max(files, key=lambda p: p.stat().st_mtime_ns).relative_to(tmp))


def check_compatible(
    student: torch.nn.Module, student_codec: Codec, teacher: torch.nn.Module, teacher_codec: Codec
) -> None:
    """OPD compares the two models' probabilities of the same token ids: both tokenizers
    must map every id alike and both output layers must have the same width.

    Raises :class:`DriverError` otherwise.
    """
    a, b = student_codec.fingerprint(), teacher_codec.fingerprint()
    if a != b:
        raise DriverError(
            f"incompatible tokenizer: teacher's ({b}, {teacher_codec.vocab_size} tokens) "
            f"differs from the student's ({a}, {student_codec.vocab_size} tokens)"
        )
    vs = int(student.get_output_embeddings().weight.shape[0])
    vt = int(teacher.get_output_embeddings().weight.shape[0])
    if vs != vt:
        raise DriverError(
            f"incompatible vocabulary: teacher has {vt} output rows, the student {vs}"
        )


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` in recent transformers
    5.x (where ``past_key_values`` is deprecated), ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
