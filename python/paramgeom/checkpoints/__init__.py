"""Checkpoint inputs: validated readers, FP8 block scales, name pairing, synthetic folders.

DESIGN.md "Checkpoints": Hugging Face folders (single file or sharded with an index), single
``.safetensors`` files and torch state dicts (``weights_only=True`` only); headers validated
before any tensor is read; base and tuned paired by name with stated rules.
"""

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.naming import NameInfo, pairing_key, parse_name
from paramgeom.checkpoints.pairing import PairedTensor, Pairing, pair_checkpoints
from paramgeom.checkpoints.reader import Checkpoint, FileIdentity, TensorInfo, open_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FileIdentity",
    "NameInfo",
    "PairedTensor",
    "Pairing",
    "TensorInfo",
    "open_checkpoint",
    "pair_checkpoints",
    "pairing_key",
    "parse_name",
]
