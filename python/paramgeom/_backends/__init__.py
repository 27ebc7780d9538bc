"""Backend registry: which implementations are usable here, and which one runs a call.

Order for ``backend="auto"`` (DESIGN.md, Backends): ``cuda`` > ``cupy`` > ``triton`` for CUDA
tensors, ``cpu`` > ``torch`` for CPU tensors. A backend that cannot run here is reported
with the reason; probing one never raises. Backends implement ops one at a time: an op is a
module-level function of the op's name (``diff_stats``, ``diff_matmul``, ``gram_update``;
see ``job.py`` for their contracts), and ``auto`` skips backends that lack it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

NAMES = ("cuda", "cupy", "triton", "cpu", "torch")
_MODULES = {
    "cuda": "cuda",
    "cupy": "cupy",
    "triton": "triton",
    "cpu": "cpu",
    "torch": "torch_ref",
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


@functools.cache
def module(name: str) -> ModuleType:
    return importlib.import_module(f"paramgeom._backends.{_MODULES[name]}")


def _status(name: str) -> tuple[bool, str]:
    try:
        return module(name).status()
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
    """Whether backend ``name`` defines ``op`` (a function of that name in its module).

    Importing a backend module never needs its native code, so this never raises for a
    known backend; an unknown one raises ``KeyError``.
    """
    try:
        return callable(getattr(module(name), op, None))
    except Exception:  # a broken optional module: status() gives the reason
        return False


def resolve(name: str, device: torch.device, op: str = "diff_stats") -> tuple[str, ModuleType]:
    """The backend that runs ``op`` on tensors of ``device``: (name, module).

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
                return candidate, module(candidate)
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
    return name, module(name)
