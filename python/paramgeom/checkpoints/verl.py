"""Read verl's FSDP checkpoints: ``model_world_size_<W>_rank_<R>.pt``, one per rank, each a
``torch.save`` of the rank's sharded state dict whose values are DTensors (its ``actor/``
folder; ``optim_*`` and ``extra_state_*`` files beside them are not model weights).

Safety: a DTensor pickles its device mesh, placements and spec as objects of
``torch.distributed``; ``torch.load(weights_only=True)`` refuses them unless they are
allow-listed, and allow-listing the real classes would construct device meshes while
loading. Here each file's ``data.pkl`` is read by :class:`_ShardUnpickler`: tensors and
storages rebuilt as torch's ``weights_only`` unpickler rebuilds them (meta storages, no data
read: :class:`~paramgeom.checkpoints.torch_zip.TorchZip` checks every storage record), the
DTensor machinery (``DTensor``, ``DTensorSpec``, ``DeviceMesh``, ``Shard``, ``Replicate``,
...) as inert :class:`~paramgeom.checkpoints.records.Record` stand-ins, anything else
refused by name.

Reassembly: the ranks form a 1-D mesh in rank order (verl's FSDP). A ``Shard(d)`` value on
rank ``R`` is the ``R``-th piece of ``torch.chunk(global, W, dim=d)``; a ``Replicate``
value is read from rank 0. Each rank's local tensor must have exactly that piece's shape,
every rank must list the same keys with the same global shape and dtype, and the pieces
must tile the tensor; other meshes and placements are refused with a message saying so.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from paramgeom._chunk import chunk_range
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import open_regular
from paramgeom.checkpoints.records import Record, record_class, state_fields
from paramgeom.checkpoints.torch_zip import TensorSpec, TorchZip

__all__ = ["SHARD_FILE", "VerlPiece", "VerlTensor", "open_shards", "shard_files"]

SHARD_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")

_RECORD_NAMES = {
    "torch.distributed.tensor._dtensor_spec": ("DTensorSpec", "TensorMeta", "ShardOrderEntry"),
    "torch.distributed._tensor.placement_types": ("DTensorSpec", "TensorMeta"),
    "torch.distributed.tensor.placement_types": ("Shard", "Replicate", "Partial", "_StridedShard"),
    "torch.distributed.device_mesh": ("DeviceMesh",),
    "torch.distributed._mesh_layout": ("_MeshLayout", "_FlatLayout"),
}
_RECORDS = {
    (module, name): record_class(name) for module, names in _RECORD_NAMES.items() for name in names
}
for _name in ("Shard", "Replicate", "Partial", "_StridedShard"):  # torch < 2.5 module path
    _RECORDS[("torch.distributed._tensor.placement_types", _name)] = _RECORDS[
        ("torch.distributed.tensor.placement_types", _name)
    ]
_DTENSOR_PATHS = {
    ("torch.distributed.tensor", "DTensor"),
    ("torch.distributed.tensor._api", "DTensor"),
    ("torch.distributed._tensor.api", "DTensor"),
    ("torch.distributed._tensor", "DTensor"),
}


class _DTensorClass:
    """Stands for the DTensor class in the pickle (never instantiated)."""


@dataclass
class _Wrapper:
    """What ``_rebuild_wrapper_subclass`` would build: the global dtype and shape."""

    dtype: object
    size: tuple


@dataclass
class _DTensorStub:
    """A pickled DTensor: its wrapper (global dtype, shape) and its state (``_local_tensor``
    and ``_spec``)."""

    wrapper: _Wrapper
    state: object


def _rebuild_wrapper_subclass(cls, dtype, size, *args, **kwargs) -> _Wrapper:
    return _Wrapper(dtype, tuple(size) if isinstance(size, (tuple, list)) else ())


def _rebuild_from_type_v2(func, new_type, args, state) -> _DTensorStub:
    """torch's is ``func(*args)`` cast to ``new_type`` with ``state`` set; only a DTensor
    rebuilt by ``_rebuild_wrapper_subclass`` is admitted."""
    if new_type is not _DTensorClass or func is not _rebuild_wrapper_subclass:
        raise pickle.UnpicklingError("only DTensor tensor subclasses are admitted")
    if not isinstance(args, tuple) or len(args) < 3:
        raise pickle.UnpicklingError("bad DTensor wrapper arguments")
    return _DTensorStub(_rebuild_wrapper_subclass(*args), state)


def _admitted(module: str, name: str) -> object | None:
    """The real object for globals that only rebuild plain tensors (what torch's
    ``weights_only`` unpickler admits), else None."""
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        return getattr(torch._utils, name)
    if module == "collections" and name == "OrderedDict":
        import collections

        return collections.OrderedDict
    if module == "torch.serialization" and name == "_get_layout":
        return torch.serialization._get_layout
    if module == "torch":
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype) or name in ("Size", "device"):
            return obj
        if name.endswith("Storage") and isinstance(obj, type):
            # FloatStorage, ...: named by persistent ids; torch's own stand-in carries the
            # dtype (as weights_only hands it over), not the deprecated storage class.
            return torch.serialization.StorageType(name)
    return None


class _ShardUnpickler(pickle.Unpickler):
    """``data.pkl`` of a verl shard file: plain tensors as ``weights_only`` rebuilds them,
    DTensor machinery as inert records, everything else refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _DTENSOR_PATHS:
            return _DTensorClass
        if (module, name) in _RECORDS:
            return _RECORDS[(module, name)]
        if (module, name) == ("torch._utils", "_rebuild_wrapper_subclass"):
            return _rebuild_wrapper_subclass
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _rebuild_from_type_v2
        found = _admitted(module, name)
        if found is not None:
            return found
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not part of a DTensor state dict (refused: paramgeom "
            "never unpickles arbitrary objects)"
        )


def _make_unpickler(f: BinaryIO) -> pickle.Unpickler:
    return _ShardUnpickler(f, encoding="utf-8")


# ------------------------------------------------------------------ the checked layout


@dataclass(frozen=True)
class VerlPiece:
    """One rank's piece of a tensor: its box in the tensor and its checked storage."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    spec: TensorSpec
    byteswap: bool


@dataclass(frozen=True)
class VerlTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    pieces: tuple[VerlPiece, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def shard_files(folder: Path) -> dict[int, Path] | None:
    """rank -> file of the ``model_world_size_W_rank_R.pt`` files in ``folder`` (all
    ranks of one world size), None when there are none; :class:`CheckpointError` for an
    incomplete or mixed set."""
    found: dict[int, dict[int, Path]] = {}
    for p in folder.iterdir():
        m = SHARD_FILE.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = p
    if not found:
        return None
    if len(found) > 1:
        raise CheckpointError(
            folder, None, f"verl shards of several world sizes: {sorted(found)} (one run only)"
        )
    world, ranks = next(iter(found.items()))
    missing = sorted(set(range(world)) - set(ranks))
    if world < 1 or missing or len(ranks) != world:
        raise CheckpointError(
            folder, None, f"verl shards of world size {world}: ranks {missing or sorted(ranks)} "
            "missing or out of range",
        )  # fmt: skip
    return dict(sorted(ranks.items()))


def _placement(rec: object, file: Path, name: str) -> tuple[str, int]:
    if isinstance(rec, Record) and rec.kind == "Replicate":
        return ("replicate", -1)
    if isinstance(rec, Record) and rec.kind == "Shard":
        dim = rec.fields().get("dim", rec.args[0] if rec.args else None)
        if isinstance(dim, int) and not isinstance(dim, bool):
            return ("shard", dim)
    kind = rec.kind if isinstance(rec, Record) else type(rec).__name__
    raise CheckpointError(
        file, name, f"DTensor placement {kind} is not read (Shard(d) or Replicate on a 1-D mesh)"
    )


def _piece_box(
    shape: tuple[int, ...], placement: tuple[str, int], rank: int, world: int
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The box of rank ``rank``'s piece (torch.chunk's split), or None for no piece."""
    kind, dim = placement
    if kind == "replicate":
        return ((0,) * len(shape), shape) if rank == 0 else None
    lo, hi = chunk_range(shape[dim], world, rank)
    offsets = tuple(lo if d == dim else 0 for d in range(len(shape)))
    sizes = tuple(hi - lo if d == dim else s for d, s in enumerate(shape))
    return offsets, sizes


def _read_rank(file: Path) -> tuple[dict, TorchZip]:
    with open_regular(file) as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            archive = TorchZip(file, fh, size, unpickler=_make_unpickler)
        except CheckpointError:
            raise
        except pickle.UnpicklingError as exc:
            raise CheckpointError(file, None, f"refused: {str(exc)[:200]}") from None
        except Exception as exc:
            raise CheckpointError(
                file, None, f"not a readable verl shard ({type(exc).__name__}: {str(exc)[:120]})"
            ) from None
    obj = archive.obj
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(file, None, "expected a state dict (names to DTensors)")
    return obj, archive


def open_shards(files: dict[int, Path]) -> dict[str, VerlTensor]:
    """Every tensor of a verl shard set, checked and mapped to its pieces."""
    from paramgeom.checkpoints.dcp import tiles_exactly

    world = len(files)
    per_rank = {r: _read_rank(f) for r, f in files.items()}
    names = list(per_rank[0][0])
    tensors: dict[str, VerlTensor] = {}
    for r, (obj, _) in per_rank.items():
        if list(obj) != names:
            extra = sorted(set(obj) ^ set(names))[:3]
            raise CheckpointError(files[r], None, f"keys differ from rank 0's (e.g. {extra})")
    for name in names:
        dtype = shape = None
        pieces = []
        for r, (obj, archive) in per_rank.items():
            value, file = obj[name], files[r]
            if isinstance(value, _DTensorStub):
                st = state_fields(value.state)
                local, spec = st.get("_local_tensor"), st.get("_spec")
                placements = spec.fields().get("placements") if isinstance(spec, Record) else None
                if not isinstance(placements, (tuple, list)) or len(placements) != 1:
                    raise CheckpointError(
                        file, name, "DTensor on a mesh of more than one dimension (or no "
                        "placements): only verl's 1-D FSDP mesh is read",
                    )  # fmt: skip
                placement = _placement(placements[0], file, name)
                g_dtype, g_shape = value.wrapper.dtype, value.wrapper.size
            elif isinstance(value, torch.Tensor):
                local, placement = value, ("replicate", -1)
                g_dtype, g_shape = value.dtype, tuple(value.shape)
            else:
                raise CheckpointError(file, name, f"value is a {type(value).__name__}")
            if not isinstance(local, torch.Tensor) or not isinstance(g_dtype, torch.dtype):
                raise CheckpointError(file, name, "DTensor without a local tensor or dtype")
            if not all(isinstance(n, int) and 0 <= n <= 1 << 48 for n in g_shape):
                raise CheckpointError(file, name, f"bad global shape {list(g_shape)}")
            if dtype is None:
                dtype, shape = g_dtype, tuple(g_shape)
            elif (g_dtype, tuple(g_shape)) != (dtype, shape):
                raise CheckpointError(
                    file, name, f"global {g_dtype} {list(g_shape)} differs from rank 0's "
                    f"{dtype} {list(shape)}",
                )  # fmt: skip
            if placement[0] == "shard" and not 0 <= placement[1] < max(len(shape), 1):
                raise CheckpointError(
                    file, name, f"Shard({placement[1]}) of a {len(shape)}-D tensor"
                )
            box = _piece_box(shape, placement, r, world)
            if box is None:
                continue
            offsets, sizes = box
            tspec = archive.spec(name, local)
            if tspec.shape != sizes or tspec.dtype != dtype:
                raise CheckpointError(
                    file, name, f"rank {r} holds {tspec.dtype} {list(tspec.shape)}, its piece of "
                    f"{list(shape)} is {list(sizes)} (a mesh or split paramgeom does not read)",
                )  # fmt: skip
            pieces.append(VerlPiece(offsets, sizes, file, tspec, archive.byteswap))
        problem = tiles_exactly(shape, [(p.offsets, p.sizes) for p in pieces])
        if problem is not None:
            raise CheckpointError(files[0], name, f"shape {list(shape)}: {problem}")
        tensors[name] = VerlTensor(name, dtype, shape, tuple(pieces))
    return tensors
