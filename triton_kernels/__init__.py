"""Triton kernels of paramgeom, shipped as ``paramgeom.triton_kernels``.

Torch tensors in, torch tensors out; nothing here knows about checkpoints or the API.
Set ``TRITON_INTERPRET=1`` before importing to run the kernels on CPU tensors.
"""

from .diff_stats import diff_stats_triton

__all__ = ["diff_stats_triton"]
