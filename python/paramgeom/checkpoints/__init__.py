"""Checkpoint inputs: validated readers, FP8 block scales, name pairing, synthetic folders.

DESIGN.md "Checkpoints": Hugging Face folders (single file or sharded with an index), single
``.safetensors`` files and torch state dicts (``weights_only=True`` only); headers validated
before any tensor is read; base and tuned paired by name with stated rules.

The names below are imported on first use: importing a torch-free submodule (the command
line's argument types) does not import the readers, and so not torch.
"""

from __future__ import annotations

import importlib

_HOME = {
    "Checkpoint": "reader",
    "CheckpointError": "errors",
    "FileIdentity": "reader",
    "NameInfo": "naming",
    "PairedTensor": "pairing",
    "Pairing": "pairing",
    "TensorInfo": "reader",
    "open_checkpoint": "reader",
    "pair_checkpoints": "pairing",
    "pairing_key": "naming",
    "parse_name": "naming",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
