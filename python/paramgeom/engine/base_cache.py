"""On-disk cache of the base side's decompositions: one base, many tuned checkpoints.

Every tuned checkpoint compared with one base needs the same top-K singular triplets of each
base matrix W0 (the subspaces the rotation is measured from and the singular values the
drift starts from): a third of the spectral work of ``paramgeom diff``. ``paramgeom diff
BASE T1 T2 ...`` (or separate diffs given one ``--base-cache DIR``) compute them for the
first tuned checkpoint and read them back for the others.

Keys are the content, not the file: a SHA-256 over the bf16 values the decomposition reads
(dtype, shape and bytes), the figure's parameters (K, path, scale factor) and the source of
the code that computes it (:func:`code_digest`). A copy of the base under another path hits;
one changed value, another K or a changed algorithm misses. A matrix below
:data:`MIN_DIM` is recomputed (its decomposition costs less than a file).

Files: ``DIR/<first two hex digits>/<key>.safetensors`` (safetensors: no pickle), written to a
temporary name and renamed, with the key and a SHA-256 of the tensor bytes in the header.
A cut, changed, foreign or non-finite file is a miss: recomputed and rewritten, never a
wrong figure. A failed write (a full disk) stops writing and says so once; the diff goes on.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.files import read_regular_bytes

__all__ = ["BaseCache", "CacheCounts", "MIN_DIM", "code_digest"]

CACHE_VERSION = "1"

HEADER_LIMIT = 1 << 16
"""Largest safetensors header of an entry (a few tensor names and the metadata)."""

MIN_DIM = 128
"""Matrices with ``min(m, n)`` below this are not cached: reading a file costs about what
their decomposition does."""

# Sources whose change changes a cached decomposition (the key includes their digest).
_CODE_FILES = (
    "linalg/_ops.py",
    "linalg/batched.py",
    "linalg/eigen.py",
    "linalg/krylov.py",
    "linalg/randomized_svd.py",
    "linalg/subspaces.py",
    "engine/compute.py",
    "engine/base_cache.py",
)
_code_digest: str | None = None


def code_digest() -> str:
    """SHA-256 of the sources that compute a cached decomposition (once per process)."""
    global _code_digest
    if _code_digest is None:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256(CACHE_VERSION.encode())
        for rel in _CODE_FILES:
            path = root / rel
            h.update(rel.encode())
            h.update(path.read_bytes() if path.is_file() else b"-")
        _code_digest = h.hexdigest()
    return _code_digest


def _bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous()
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


@dataclass
class CacheCounts:
    """What one run did with the cache (summary.json ``run.base_cache``)."""

    hits: int = 0
    misses: int = 0
    written: int = 0
    rejected: int = 0
    write_error: str | None = None
    notes: list[str] = field(default_factory=list)


class BaseCache:
    """The cache folder. ``key`` names a decomposition; ``get`` returns its tensors or None;
    ``put`` stores them. Safe for several processes at once (each file appears whole)."""

    def __init__(self, folder: str | Path, options: str) -> None:
        self.folder = Path(folder)
        self.options = options
        self.counts = CacheCounts()
        self._lock = threading.Lock()  # diff's workers read and write side by side

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                setattr(self.counts, name, getattr(self.counts, name) + 1)

    @staticmethod
    def wanted(m: int, n: int) -> bool:
        """Whether an ``m x n`` matrix's decomposition is worth a file."""
        return min(m, n) >= MIN_DIM

    def key(self, values: Iterable[torch.Tensor], *params: object) -> str:
        """Key of a decomposition of the matrix whose bf16 values are the concatenation of
        ``values`` along dim 0 (row blocks of a streamed matrix, or the whole matrix), with
        the figure's parameters ``params``."""
        h = hashlib.sha256()
        h.update(f"{code_digest()}|{self.options}|{params!r}".encode())
        rows, layout = 0, None
        for v in values:
            if (v.dtype, tuple(v.shape[1:])) != layout:  # once for one matrix's row blocks
                layout = (v.dtype, tuple(v.shape[1:]))
                h.update(f"|{layout}|".encode())
            h.update(_bytes(v))
            rows += int(v.shape[0]) if v.dim() else 1
        h.update(f"|rows={rows}".encode())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key`` when the file is whole and holds exactly
        ``shapes`` (name -> shape, float64, finite); else None (a miss)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self._path(key)
        if not os.path.lexists(path):
            self._count("misses")
            return None
        # Never more than the tensors need (plus a header): a huge, FIFO or device entry
        # is refused without blocking or filling memory.
        limit = sum(8 * math.prod(shape) for shape in shapes.values()) + HEADER_LIMIT
        try:
            raw = read_regular_bytes(path, limit, "base cache entry")
        except CheckpointError:
            self._count("misses", "rejected")
            return None
        try:
            tensors = load(raw)
            meta = _metadata(raw)
        except (SafetensorError, ValueError, OSError, RuntimeError):
            tensors, meta = None, None
        if tensors is None or not _valid(tensors, meta, key, shapes):
            self._count("misses", "rejected")
            return None
        self._count("hits")
        # The layout put was given, in fresh memory: BLAS takes other paths (another
        # summation order, a last bit of a figure) for transposed or unaligned operands.
        columns = _column_major(meta)
        return {n: t.clone().T if n in columns else t.clone() for n, t in tensors.items()}

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (float64) under ``key``; after a failed write, nothing more."""
        from safetensors.torch import save

        if self.counts.write_error is not None:
            return
        data, columns = {}, []
        for name, v in tensors.items():
            v = v.detach().to("cpu", torch.float64)
            if v.dim() == 2 and not v.is_contiguous() and v.T.is_contiguous():
                columns.append(name)  # column-major (a QR factor): kept so, see get()
                v = v.T
            data[name] = v.contiguous()
        meta = {
            "paramgeom_base_cache": CACHE_VERSION,
            "key": key,
            "column_major": ",".join(sorted(columns)),
            "sha256": _digest(data, columns),
        }
        try:
            _write_whole(self._path(key), save(data, metadata=meta))
        except OSError as exc:
            with self._lock:
                if self.counts.write_error is None:
                    self.counts.write_error = f"{self.folder}: {exc.strerror or exc}"
                    self.counts.notes.append(
                        f"base cache {self.folder}: cannot write ({exc.strerror or exc}); the "
                        "figures are complete, later checkpoints recompute the base side"
                    )
            return
        self._count("written")


def _write_whole(path: Path, raw: bytes) -> None:
    """Write ``raw`` to ``path`` so that readers see the old file or all of the new one."""
    # Process and thread in the name: two workers may store the same key (tied weights).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _column_major(meta: dict[str, str]) -> set[str]:
    return {n for n in meta.get("column_major", "").split(",") if n}


def _digest(tensors: dict[str, torch.Tensor], columns) -> str:
    h = hashlib.sha256(",".join(sorted(columns)).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_bytes(t))
    return h.hexdigest()


def _metadata(raw: bytes) -> dict[str, str]:
    import json

    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def _valid(tensors, meta, key: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    if not meta or meta.get("key") != key:
        return False
    columns = _column_major(meta)
    if meta.get("sha256") != _digest(tensors, columns) or set(tensors) != set(shapes):
        return False
    for name, shape in shapes.items():
        t = tensors[name]
        stored = tuple(reversed(shape)) if name in columns else tuple(shape)
        if t.dtype != torch.float64 or tuple(t.shape) != stored:
            return False
        if not bool(torch.isfinite(t).all()):
            return False
    return True
