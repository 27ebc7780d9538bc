"""verl's FSDP checkpoints, written with verl's own library calls: FSDP (``device_mesh``,
``use_orig_params``) on two gloo CPU ranks and an AdamW step, then each rank's
``SHARDED_STATE_DICT`` (DTensor values) saved with ``torch.save`` as
``actor/model_world_size_2_rank_R.pt`` beside the optimizer and extra-state files, as verl's
checkpoint manager does. Read back, every tensor equals the DTensors gathered
(``full_tensor()``) bit for bit; row blocks cross the ranks' pieces; DTensor's classes are
never admitted (a shard holding other objects is refused, and no code in it runs); missing
or mismatched ranks are one line naming the file."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from gloo import gathered, run_ranks

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.reader import open_checkpoint
from paramgeom.engine.trajectory import run_checkpoints

WRITER = textwrap.dedent(
    """
    import sys, warnings
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    warnings.simplefilter("ignore")

    def run(rank, world, store, out):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import ShardedStateDictConfig
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, StateDictType
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.ReLU(),
                                    torch.nn.Linear(33, 7), torch.nn.Linear(7, 1))
        model = FSDP(model, device_mesh=mesh, use_orig_params=True,
                     device_id=torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
        actor = f"{out}/global_step_1/actor"
        import os
        os.makedirs(actor, exist_ok=True)
        with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT,
                                  ShardedStateDictConfig(offload_to_cpu=True)):
            sd = model.state_dict()
            torch.save(sd, f"{actor}/model_world_size_{world}_rank_{rank}.pt")
            torch.save({"state": {}}, f"{actor}/optim_world_size_{world}_rank_{rank}.pt")
        torch.save({"lr_scheduler": {}}, f"{actor}/extra_state_world_size_{world}_rank_{rank}.pt")
        # The oracle: the DTensors gathered (FSDP1's FULL_STATE_DICT segfaults on CPU).
        full = {k: v.full_tensor().clone() for k, v in sd.items()}
        if rank == 0:
            torch.save(full, f"{out}/full.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
    """
)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verl")
    run_ranks(WRITER, root, str(root), writer=True)
    return root


@pytest.mark.parametrize("where", ["global_step_1", "global_step_1/actor"])
def test_every_tensor_equals_the_full_state_dict(written, where):
    full = gathered(written)
    with open_checkpoint(written / where) as ckpt:
        assert set(ckpt.tensors) == set(full)
        for name, want in full.items():
            got = ckpt.read(name)
            assert got.dtype == want.dtype and torch.equal(got, want), name
        # 1 row over 2 ranks: rank 1's piece is empty.
        pieces = ckpt._by_name["3.weight"].layout["3.weight"].pieces
        assert [p.sizes for p in pieces] == [(1, 7), (0, 7)]


@pytest.mark.parametrize("name,start,stop", [("0.weight", 10, 20), ("0.weight", 16, 18),
                                             ("2.weight", 0, 7), ("0.bias", 17, 33)])  # fmt: skip
def test_row_blocks(written, name, start, stop):
    with open_checkpoint(written / "global_step_1") as ckpt:
        got = ckpt.read_rows(name, start, stop)
    assert torch.equal(got, gathered(written)[name][start:stop])


def test_run_folder_of_verl_steps(written, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(written / "global_step_1", run / "global_step_1")
    (run / "global_step_10").mkdir()
    assert [p.name for p in run_checkpoints(run)] == ["global_step_1", "global_step_10"]
    with open_checkpoint(run_checkpoints(run)[0]) as ckpt:  # global_step_N/actor inside
        assert torch.equal(ckpt.read("2.weight"), gathered(written)["2.weight"])


def _copy(written: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "actor"
    shutil.copytree(written / "global_step_1" / "actor", dst)
    return dst


def _one_line(path: Path, *words: str) -> None:
    with pytest.raises(CheckpointError) as info, open_checkpoint(path) as ckpt:
        for name in ckpt.tensors:
            ckpt.read(name)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_missing_rank(written, tmp_path):
    actor = _copy(written, tmp_path)
    (actor / "model_world_size_2_rank_1.pt").unlink()
    _one_line(actor, "world size 2", "missing")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_other_objects_are_refused_and_never_run(written, tmp_path):
    actor = _copy(written, tmp_path)
    marker = tmp_path / "ran"
    torch.save({"0.weight": _RunsCode(str(marker))}, actor / "model_world_size_2_rank_1.pt")
    _one_line(actor, "model_world_size_2_rank_1.pt", "posix.system", "refused")
    assert not marker.exists()


def test_rank_files_that_disagree(written, tmp_path):
    actor = _copy(written, tmp_path)
    r0 = actor / "model_world_size_2_rank_0.pt"
    r1 = actor / "model_world_size_2_rank_1.pt"
    # Rank 1's file replaced by rank 0's: its pieces are rank 0's shape at rank 1's place.
    shutil.copy(r0, r1)
    _one_line(actor, "model_world_size_2_rank_1.pt", "its piece of")
    # Truncated rank file.
    shutil.copy(written / "global_step_1" / "actor" / r1.name, r1)
    r1.write_bytes(r1.read_bytes()[:300])
    _one_line(actor, "model_world_size_2_rank_1.pt")


def test_cli_diff_of_verl_checkpoints(written, tmp_path):
    """The engine's identity, journal and reads on a verl shard set (journal keys come
    from the rank files' names, sizes and times, never their whole bytes)."""
    import csv
    import subprocess
    import sys

    out = tmp_path / "out"
    step = str(written / "global_step_1")
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "diff", step, step, "--out", str(out),
         "--no-spectra", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(out / "tensors.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["name"] for r in rows} == set(gathered(written))
    assert all(float(r["unchanged_fraction"]) == 1.0 for r in rows)
