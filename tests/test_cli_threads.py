"""The CLI runs SciPy's OpenBLAS on one thread unless the user says otherwise (see the comment
in ``paramgeom.cli``: its spinning workers starve torch's), set before NumPy loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from paramgeom.reproduce.runner import _env

_PROBE = (
    "import os, paramgeom.cli, numpy, scipy.linalg\nprint(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
)


@pytest.mark.parametrize("given,want", [(None, "1"), ("3", "3")])
def test_cli_import_defaults_openblas_to_one_thread(given, want):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want


def test_reproduce_jobs_keep_openblas_on_one_thread():
    env = _env(4)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "4"
    assert env["OPENBLAS_NUM_THREADS"] == "1"
