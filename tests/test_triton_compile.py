"""The Triton kernels as a GPU machine first meets them, checked without a GPU.

Without a GPU the tests run the kernels in Triton's interpreter, which accepts code that
the compiler rejects and lets CPU tensors through. Two checks close that gap:

* ``test_compiles_for_sm90``: every kernel variant that the dispatch launches is compiled
  for sm_90 through to the cubin (``tests/triton_compile_check.py``, in a fresh process),
  with the test venv's Triton and with each release in ``PINNED_TRITON`` (the GPU
  machine's). A pinned release is pip-installed on its own (``--no-deps``: torch and the
  rest come from the test venv) into pytest's cache, ``.pytest_cache/d/triton-<version>``
  (git-ignored; a fresh clone installs it once, about 190 MB to download), and put in
  front of the venv's Triton on ``PYTHONPATH``. The test skips only when the package
  index cannot be reached.
* ``test_triton_tests_as_a_gpu_machine_sees_them``: the Triton test files run with the
  interpreter off and the backend reported usable (``tests/triton_gpu_view.py``), as on a
  GPU machine; none may fail (the ones needing the interpreter skip).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# The GPU machine's Triton (Python 3.12, torch 2.11+cu130).
PINNED_TRITON = ("3.6.0",)
TRITON_TEST_FILES = (
    "test_diff_matmul.py",
    "test_gram_update.py",
    "test_diff_stats_triton.py",
    "test_diff_stats_scaled.py",
)
# pip's words for an index it could not reach.
NETWORK_ERRORS = (
    "Failed to establish a new connection",
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "ConnectTimeoutError",
    "Read timed out",
    "ProxyError",
)


def _compiled_env(tmp_path: Path, pythonpath: Path | None = None) -> dict[str, str]:
    """The environment of a process that compiles: interpreter off, a fresh kernel cache
    (so every variant really compiles), a pinned Triton first on the path when given."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path / "cache"))
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    return env


def _ptxas_env(env: dict[str, str], triton_dir: Path) -> None:
    """Compile to the cubin with the Triton wheel's own ptxas, else the one on PATH."""
    if env.get("TRITON_PTXAS_PATH"):
        return
    if (triton_dir / "backends" / "nvidia" / "bin" / "ptxas").exists():
        return
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip(f"no ptxas: neither in {triton_dir} nor on PATH")
    env["TRITON_PTXAS_PATH"] = ptxas


def _install_triton(version: str, request, tmp_path_factory) -> Path:
    """A directory holding ``triton==version`` alone (installed once, then reused)."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = Path(cache.mkdir(f"triton-{version}"))
    else:  # -p no:cacheprovider
        root = tmp_path_factory.mktemp(f"triton-{version}")
    target = root / "site"
    if (target / "triton" / "__init__.py").exists() and any(target.glob("triton-*.dist-info")):
        return target
    partial = root / f"site.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--quiet"]
    cmd += ["--timeout", "60", "--retries", "2", "--target", str(partial), f"triton=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        if any(marker in output for marker in NETWORK_ERRORS):
            pytest.skip(f"cannot reach the package index for triton=={version}: {output[-500:]}")
        pytest.fail(f"pip install triton=={version} failed:\n{output[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _run_compile_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TESTS / "triton_compile_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
@pytest.mark.parametrize("version", ["test venv", *PINNED_TRITON])
def test_compiles_for_sm90(version, request, tmp_path, tmp_path_factory):
    """Every kernel variant compiles for sm_90 (no GPU needed) with this Triton."""
    triton = pytest.importorskip("triton")
    if version == "test venv":
        env = _compiled_env(tmp_path)
        _ptxas_env(env, Path(triton.__file__).parent)
        want = triton.__version__
    else:
        if triton.__version__ == version:
            pytest.skip(f"the test venv's Triton is {version}: checked by the 'test venv' case")
        site = _install_triton(version, request, tmp_path_factory)
        env = _compiled_env(tmp_path, site)
        _ptxas_env(env, site / "triton")
        want = version
    proc = _run_compile_check(env)
    summary = re.search(r"compiled (\d+) kernels for sm_90 with triton (\S+)", proc.stdout)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    assert proc.returncode == 0 and summary, (
        f"compile check with triton {want} failed (rc {proc.returncode}): {last}\n"
        f"{proc.stderr[:6000]}"
    )
    assert summary.group(2) == want, f"ran triton {summary.group(2)}, not {want}"
    assert int(summary.group(1)) > 0


@pytest.mark.slow
def test_triton_tests_as_a_gpu_machine_sees_them(tmp_path):
    """The Triton test files with the interpreter off and the backend usable: no failures
    and no errors (tests on CPU tensors skip; with no GPU the CUDA ones skip too)."""
    pytest.importorskip("triton")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the Triton test files run for real in this session")
    env = _compiled_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"]
    cmd += ["-p", "triton_gpu_view", "--rootdir", str(TESTS.parent)]
    cmd += [str(TESTS / name) for name in TRITON_TEST_FILES]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=TESTS.parent, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pytest rc {proc.returncode}:\n{out[-8000:]}"
    tail = out.strip().splitlines()[-1]
    assert "passed" in tail and not re.search(r"\b(failed|errors?)\b", tail), out[-8000:]
