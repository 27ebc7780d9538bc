"""Backend registry: which implementations are usable here, and which one runs a call.

Order for ``backend="auto"`` (DESIGN.md, Backends): ``cuda`` > ``cupy`` > ``triton`` for CUDA
tensors, ``cpu`` > ``torch`` for CPU tensors. A backend that cannot run here is reported
with the reason; probing one never raises. :data:`OPS` is the dispatch table: for each op
(``diff_stats``, ``diff_matmul``, ``gram_update``; ``job.py`` states their contracts) the
function each backend runs it with. A backend module imports no native code, GPU library
or Triton at import time (each ~1 ms), so the table can name every function directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from paramgeom._backends import cpu, cuda, cupy, torch_ref
from paramgeom._backends import triton as triton_backend

NAMES = ("cuda", "cupy", "triton", "cpu", "torch")
_MODULES: dict[str, ModuleType] = {
    "cuda": cuda,
    "cupy": cupy,
    "triton": triton_backend,
    "cpu": cpu,
    "torch": torch_ref,
}
# op -> backend -> the function that runs it. A backend missing from an op's row does not
# implement that op ("auto" skips it; naming it explicitly is a ValueError).
OPS: dict[str, dict[str, Callable]] = {
    "diff_stats": {
        "cuda": cuda.diff_stats,
        "cupy": cupy.diff_stats,
        "triton": triton_backend.diff_stats,
        "cpu": cpu.diff_stats,
        "torch": torch_ref.diff_stats,
    },
    "diff_matmul": {
        "cuda": cuda.diff_matmul,
        "cupy": cupy.diff_matmul,
        "triton": triton_backend.diff_matmul,
        "cpu": cpu.diff_matmul,
        "torch": torch_ref.diff_matmul,
    },
    "gram_update": {
        "cuda": cuda.gram_update,
        "cupy": cupy.gram_update,
        "triton": triton_backend.gram_update,
        "cpu": cpu.gram_update,
        "torch": torch_ref.gram_update,
    },
}
_DEVICES = {
    "cuda": ("cuda",),
    "cupy": ("cuda",),
    "triton": ("cuda",),
    "cpu": ("cpu",),
    "torch": ("cpu", "cuda"),
}
_AUTO = {"cuda": ("cuda", "cupy", "triton", "torch"), "cpu": ("cpu", "torch")}


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here; ``reason`` says why not, or what it runs on."""

    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]


def module(name: str) -> ModuleType:
    """The module of backend ``name`` (``KeyError`` for an unknown name)."""
    return _MODULES[name]


def _status(name: str) -> tuple[bool, str]:
    try:
        return _MODULES[name].status()
    except Exception as exc:  # a broken optional dependency must not break the listing
        return False, f"failed to load: {type(exc).__name__}: {exc}"


def backends() -> dict[str, BackendInfo]:
    """Every backend, in ``auto`` preference order, with whether it is usable here and why.

    >>> import paramgeom
    >>> paramgeom.backends()["torch"].available
    True
    """
    out = {}
    for name in NAMES:
        ok, reason = _status(name)
        out[name] = BackendInfo(name, ok, reason, _DEVICES[name])
    return out


def _runs_on(name: str, device: torch.device) -> bool:
    if device.type in _DEVICES[name]:
        return True
    # The Triton interpreter runs kernels on CPU tensors (tests use it without a GPU).
    return name == "triton" and device.type == "cpu" and _triton_interpreted()


def _triton_interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def implements(name: str, op: str) -> bool:
    """Whether backend ``name`` runs ``op`` (has a row in :data:`OPS`)."""
    return name in OPS[op]


def resolve(name: str, device: torch.device, op: str = "diff_stats") -> tuple[str, Callable]:
    """The backend that runs ``op`` on tensors of ``device``: (name, its function).

    ``auto`` takes the first usable backend of the DESIGN.md order for the device that
    implements ``op``. ``ValueError`` for an unknown name, a device the backend cannot
    take, or an explicit backend that does not implement ``op``; ``RuntimeError`` (with the
    reason) for a backend that is not usable here.
    """
    if name == "auto":
        for candidate in _AUTO.get(device.type, ("torch",)):
            if not implements(candidate, op):
                continue
            ok, _ = _status(candidate)
            if ok:
                return candidate, OPS[op][candidate]
        raise RuntimeError(f"no backend can run {op} on device {device}")  # torch always can
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(NAMES)}")
    if not _runs_on(name, device):
        raise ValueError(
            f"backend {name!r} runs on {'/'.join(_DEVICES[name])} tensors, got {device.type}"
        )
    ok, reason = _status(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not usable here: {reason}")
    if not implements(name, op):
        raise ValueError(f"backend {name!r} does not implement {op}")
    return name, OPS[op][name]
