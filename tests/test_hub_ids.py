"""Hugging Face repo ids in place of paths (``org/name[@revision]``), resolved from a cache
folder laid out by the test exactly as huggingface_hub lays it out (``models--org--name/``
with ``blobs/``, ``snapshots/<commit>/`` symlinks and ``refs/main``): read offline, by
branch or commit; a model missing from the cache under ``--offline`` is one line (exit 2);
a path that exists wins over a repo id."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from paramgeom.checkpoints import hub
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.reader import open_checkpoint

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 6, generator=g).bfloat16(),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(6, 6, generator=g).bfloat16(),
    }


def _cache_model(cache: Path, repo: str, tensors: dict[str, torch.Tensor]) -> None:
    """One model in huggingface_hub's cache layout."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / COMMIT
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    files = {"model.safetensors": save(tensors), "config.json": b'{"model_type": "llama"}'}
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    _cache_model(cache, "org/base", _tensors(0))
    _cache_model(cache, "org/tuned", _tensors(1))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HOME", raising=False)
    return cache


@pytest.mark.parametrize("spec", ["org/base", "org/base@main", f"org/base@{COMMIT}"])
def test_repo_id_reads_the_cached_snapshot(cache, monkeypatch, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    want = _tensors(0)
    with open_checkpoint(spec) as ckpt:
        assert set(ckpt.tensors) == set(want)
        for name, t in want.items():
            assert torch.equal(ckpt.read(name), t)
        assert ckpt.config == {"model_type": "llama"}


def test_missing_model_offline_is_one_line(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        open_checkpoint("org/absent@v2")
    msg = str(info.value)
    assert msg.startswith("org/absent@v2: ") and "--offline" in msg and str(cache) in msg
    assert "\n" not in msg


def test_a_path_that_exists_wins(cache, tmp_path, monkeypatch):
    local = tmp_path / "org" / "base"
    local.mkdir(parents=True)
    save_file(_tensors(2), local / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    with open_checkpoint("org/base") as ckpt:
        name = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(ckpt.read(name), _tensors(2)[name])


def test_spelling_rule():
    ok = ["Qwen/Qwen3-8B", "Qwen/Qwen3-8B@main", "a/b@v1.0", f"org/m@{COMMIT}"]
    bad = ["./x/y", "x", "a/b/c", "/a/b", "a--b/c", "a/..", "a/b@", "-a/b", "a/b.", "~/x"]
    assert all(hub.is_repo_id(s) for s in ok)
    assert not any(hub.is_repo_id(s) for s in bad)


def _cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", *args], capture_output=True, text=True,
        timeout=300, env=env,
    )  # fmt: skip


def test_cli_diff_of_two_repo_ids_offline(cache, tmp_path):
    env = dict(os.environ, HF_HUB_CACHE=str(cache))
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "out"
    proc = _cli(["diff", "org/base", "org/tuned", "--offline", "--out", str(out), "--quiet",
                 "--no-spectra"], env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "tensors.csv").read_text().count("\n") == 3  # header + 2 matrices
    proc = _cli(["diff", "org/base", "org/nothere", "--offline", "--out", str(tmp_path / "o2"),
                 "--quiet"], env)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "org/nothere" in lines[0] and "--offline" in lines[0], lines


def test_download_failure_is_one_line(cache, tmp_path):
    """Not cached and downloads allowed, but the hub unreachable (a closed local port)."""
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    proc = _cli(["diff", "org/base", "org/remote", "--out", str(tmp_path / "o"), "--quiet"], env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "downloading Hugging Face repo org/remote failed" in lines[0]
