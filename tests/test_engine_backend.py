"""``--backend`` reaches every kernel call of ``paramgeom diff`` and ``trajectory``: the
statistics and also the products inside the spectra, angles and sketches (issue: before,
``paramgeom.linalg`` called the kernels on ``auto`` whatever the flag said)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from paramgeom import linalg
from paramgeom.cli import main
from paramgeom.linalg import _ops


def _save(folder: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    # 160 x 128: wide enough that block Krylov at --rank 4 (blocks of 14) runs its blocks
    # before half of 128 (on CPU the exact path's products are float64 GEMMs, no kernel).
    w = torch.randn(160, 128, generator=g)
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": (w + 0.1 * seed).to(torch.bfloat16),
            "model.layers.0.self_attn.q_proj.weight": (w.T + 0.05 * seed)
            .contiguous()
            .to(torch.bfloat16),
        },
        str(folder / "model.safetensors"),
    )
    return folder


@pytest.fixture
def spy(monkeypatch):
    """The backend of every diff_matmul / gram_update call linalg makes."""
    seen: list[tuple[str, str]] = []
    real_dm, real_gu = _ops._kernel_diff_matmul, _ops._kernel_gram_update

    def dm(*args, backend="auto", **kwargs):
        seen.append(("diff_matmul", backend))
        return real_dm(*args, backend=backend, **kwargs)

    def gu(*args, backend="auto", **kwargs):
        seen.append(("gram_update", backend))
        return real_gu(*args, backend=backend, **kwargs)

    monkeypatch.setattr(_ops, "_kernel_diff_matmul", dm)
    monkeypatch.setattr(_ops, "_kernel_gram_update", gu)
    return seen


@pytest.mark.parametrize("extra", [[], ["--exact-threshold", "0"]], ids=["exact", "randomized"])
def test_diff_backend_reaches_the_linear_algebra(tmp_path, spy, extra):
    base, tuned = _save(tmp_path / "b", 0), _save(tmp_path / "t", 1)
    args = ["diff", str(base), str(tuned), "--out", str(tmp_path / "o"), "--quiet",
            "--rank", "4", "--backend", "torch", *extra]  # fmt: skip
    assert main(args) == 0
    if extra:  # the range finder and the subspace iteration multiply by dW, W0 and W1
        assert {k for k, _ in spy} >= {"diff_matmul"}
    assert spy and all(b == "torch" for _, b in spy), spy


def test_trajectory_backend_reaches_the_linear_algebra(tmp_path, spy):
    base, step = _save(tmp_path / "b", 0), _save(tmp_path / "step-5", 1)
    args = ["trajectory", str(base), str(step), "--out", str(tmp_path / "o"), "--quiet",
            "--k", "2", "--backend", "torch"]  # fmt: skip
    assert main(args) == 0
    assert spy and all(b == "torch" for _, b in spy), spy


def test_kernel_backend_is_scoped(spy):
    w0 = torch.randn(8, 6).to(torch.bfloat16)
    w1 = torch.randn(8, 6).to(torch.bfloat16)
    with linalg.kernel_backend("torch"):
        linalg.diff_svdvals(w0, w1)
    linalg.diff_svdvals(w0, w1)
    assert {b for _, b in spy[: len(spy) // 2]} == {"torch"}
    assert spy[-1][1] == "auto"


def test_each_rank_sets_its_cuda_device_before_nccl(monkeypatch):
    """Under torchrun with --device cuda, rank r binds cuda:LOCAL_RANK before the NCCL
    process group exists (else every rank's first collective lands on cuda:0)."""
    import torch.distributed as dist

    from paramgeom.engine import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend: calls.append(("init", backend)))  # fmt: skip
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ctx = distributed.context("cuda")
    assert calls == [("set_device", 1), ("init", "nccl")]
    assert (ctx.rank, ctx.world) == (1, 2)
