"""pytest plugin: run the tests with the triton backend as a GPU machine reports it.

Loaded with ``-p triton_gpu_view`` (``tests/`` on ``PYTHONPATH``, ``TRITON_INTERPRET=0``)
by ``tests/test_triton_compile.py``: the backend says it is usable, the kernels are
imported compiled (no interpreter), and CPU tensors are refused as on a GPU machine, so
every Triton test that needs the interpreter must skip rather than fail. Nothing can
launch here (no GPU), so the tests that run on CUDA tensors skip too, as do cuda and cupy.
"""

from __future__ import annotations

import os

REASON = "triton forced usable by tests/triton_gpu_view.py (a GPU machine's view; no GPU here)"


def pytest_configure(config):
    interpret = os.environ.get("TRITON_INTERPRET", "0")
    if interpret.lower() not in ("", "0", "false", "off"):
        raise RuntimeError(f"triton_gpu_view needs TRITON_INTERPRET=0, got {interpret!r}")
    from paramgeom._backends import triton as triton_backend

    triton_backend.status = lambda: (True, REASON)
    from paramgeom.triton_kernels import diff_stats

    if diff_stats.INTERPRETED:
        raise RuntimeError("triton_gpu_view: the Triton kernels were imported interpreted")
