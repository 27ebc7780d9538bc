"""paramgeom.backends(), dispatch, the compiled module's layout, and the CLI listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import paramgeom
from paramgeom import _contract, _native


def test_lists_all_five_in_auto_order():
    infos = paramgeom.backends()
    assert list(infos) == ["cuda", "cupy", "triton", "cpu", "torch"]
    for info in infos.values():
        assert isinstance(info.available, bool) and info.reason
    assert infos["torch"].available
    assert infos["cpu"].available, infos["cpu"].reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
def test_gpu_backends_say_why_not_here():
    infos = paramgeom.backends()
    for name in ("cuda", "cupy"):
        assert not infos[name].available
        assert len(infos[name].reason) > 5


def test_compiled_module_was_built_from_this_contract():
    """paramgeom/contract.h is rendered from _contract.py at configure time: a module built
    from an older table (a stale build) disagrees here."""
    module, why = _native.load("_C")
    assert module is not None, why
    for name in ("MAX_TOLS", "NUM_COUNTS", "NUM_SUMS", "GROUP_ELEMS", "REL0", "ABS0", "EQUAL"):
        assert getattr(module, name) == getattr(_contract, name), name


def test_missing_extension_is_a_reason_not_an_error():
    module, why = _native.load("_C_does_not_exist")
    assert module is None and "not compiled" in why


def test_cli_backends_table_and_json():
    out = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "backends", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert set(data) == {"cuda", "cupy", "triton", "cpu", "torch"}
    assert data["torch"]["available"] is True
    table = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "backends"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cpu" in table.stdout and "torch" in table.stdout


def test_cli_bad_usage_exits_2():
    out = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
