"""paramgeom: fused kernels for the parameter-space geometry of post-training.

Implements the diagnostics of "Geometry of On-Policy Distillation: A Parameter-Space
Analysis" (arXiv 2606.07082) with one kernel source per op and five backends
(cuda, cupy, triton, cpu, torch); see ``paramgeom.backends()``.

Kernels (DESIGN.md, kernel contracts 1-3): :func:`diff_stats`, :func:`gram_update`,
:func:`diff_matmul`. Linear algebra on implicit differences (contracts 4-5):
:mod:`paramgeom.linalg`. The paper's metrics: :mod:`paramgeom.metrics`. The training
monitor: :class:`GeometryMonitor` (:mod:`paramgeom.monitor`). Every name is imported on
first use: ``import paramgeom`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on first use (below), so ``import paramgeom`` stays light
    from paramgeom import linalg, metrics
    from paramgeom._backends import BackendInfo, backends
    from paramgeom.api.diff_matmul import diff_matmul
    from paramgeom.api.diff_stats import diff_stats
    from paramgeom.api.gram_update import gram_update
    from paramgeom.monitor import GeometryMonitor
    from paramgeom.results import DiffStats

__all__ = [
    "BackendInfo",
    "DiffStats",
    "GeometryMonitor",
    "backends",
    "diff_matmul",
    "diff_stats",
    "gram_update",
    "linalg",
    "metrics",
]
__version__ = "0.1.0"

# name -> (module, attribute; None: the module itself). Everything here imports torch
# (2.5-3.5 s): ``import paramgeom`` does not, so ``paramgeom --help`` and the command
# line's argument errors answer without it, and each name is imported on first use.
_LAZY: dict[str, tuple[str, str | None]] = {
    "BackendInfo": ("paramgeom._backends", "BackendInfo"),
    "DiffStats": ("paramgeom.results", "DiffStats"),
    "GeometryMonitor": ("paramgeom.monitor", "GeometryMonitor"),
    "backends": ("paramgeom._backends", "backends"),
    "diff_matmul": ("paramgeom.api.diff_matmul", "diff_matmul"),
    "diff_stats": ("paramgeom.api.diff_stats", "diff_stats"),
    "gram_update": ("paramgeom.api.gram_update", "gram_update"),
    "linalg": ("paramgeom.linalg", None),
    "metrics": ("paramgeom.metrics", None),
}


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'paramgeom' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
