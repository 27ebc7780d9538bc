"""paramgeom: fused kernels for the parameter-space geometry of post-training.

Implements the diagnostics of "Geometry of On-Policy Distillation: A Parameter-Space
Analysis" (arXiv 2606.07082) with one kernel source per op and five backends
(cuda, cupy, triton, cpu, torch); see ``paramgeom.backends()``.
"""

from paramgeom._backends import BackendInfo, backends
from paramgeom.api.diff_stats import diff_stats
from paramgeom.results import DiffStats

__all__ = ["BackendInfo", "DiffStats", "backends", "diff_stats"]
__version__ = "0.1.0"
