"""paramgeom: fused kernels for the parameter-space geometry of post-training.

Implements the diagnostics of "Geometry of On-Policy Distillation: A Parameter-Space
Analysis" (arXiv 2606.07082) with one kernel source per op and five backends
(cuda, cupy, triton, cpu, torch); see ``paramgeom.backends()``.

Kernels (DESIGN.md, kernel contracts 1-3): :func:`diff_stats`, :func:`gram_update`,
:func:`diff_matmul`. Linear algebra on implicit differences (contracts 4-5):
:mod:`paramgeom.linalg`. The paper's metrics: :mod:`paramgeom.metrics`. The training
monitor: :class:`GeometryMonitor` (:mod:`paramgeom.monitor`, imported on first use).
"""

from paramgeom import linalg, metrics
from paramgeom._backends import BackendInfo, backends
from paramgeom.api.diff_matmul import diff_matmul
from paramgeom.api.diff_stats import diff_stats
from paramgeom.api.gram_update import gram_update
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


def __getattr__(name: str):
    # The training monitor is imported on first use, so ``import paramgeom`` stays light.
    if name == "GeometryMonitor":
        from paramgeom.monitor import GeometryMonitor

        return GeometryMonitor
    raise AttributeError(f"module 'paramgeom' has no attribute {name!r}")
