"""Triton kernels of paramgeom, shipped as ``paramgeom.triton_kernels``.

Torch tensors in, torch tensors out; nothing here knows about checkpoints or the API.
Set ``TRITON_INTERPRET=1`` before importing to run the kernels on CPU tensors.
"""

from .diff_matmul import diff_matmul_triton
from .diff_stats import diff_stats_triton
from .gram_update import gram_update_triton

__all__ = ["diff_matmul_triton", "diff_stats_triton", "gram_update_triton"]
