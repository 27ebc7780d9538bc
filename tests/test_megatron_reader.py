"""Megatron-Core ``torch_dist`` checkpoints written by megatron-core itself
(``dist_checkpointing.save`` of ``ShardedTensor``s on two gloo CPU ranks: a layer-stacked
weight with MCore's prepended layer axis, rows split over the tensor-parallel ranks, and a
bf16 weight split by columns): read back as DCP, every tensor equals the full tensor bit
for bit; ``common.pt`` and ``metadata.json`` beside the data are not read. megatron-core's
save path assumes CUDA in two places (a stream sync and a flag tensor's device); the writer
points both at the CPU, nothing else is changed."""

from __future__ import annotations

import textwrap

import pytest
import torch
from gloo import gathered, run_ranks

from paramgeom.checkpoints.reader import open_checkpoint

pytest.importorskip("megatron.core")

WRITER = textwrap.dedent(
    """
    import os, sys, warnings
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    warnings.simplefilter("ignore")

    def run(rank, world, store, out):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.current_device = lambda: "cpu"
        from megatron.core import dist_checkpointing
        from megatron.core.dist_checkpointing import ShardedTensor
        g = torch.Generator().manual_seed(0)
        layers = 3
        fc1 = torch.randn(layers, 8, 6, generator=g)  # [L, out, in], TP splits rows
        proj = torch.randn(6, 10, generator=g).bfloat16()  # TP splits columns
        sd = {}
        rows = fc1.shape[1] // world
        for layer in range(layers):
            sd[f"decoder.layers.{layer}.mlp.linear_fc1.weight"] = (
                ShardedTensor.from_rank_offsets(
                    "decoder.layers.mlp.linear_fc1.weight",
                    fc1[layer, rank * rows : (rank + 1) * rows].clone(),
                    (0, layer, layers), (1, rank, world), replica_id=0, prepend_axis_num=1))
        cols = proj.shape[1] // world
        sd["decoder.final_proj.weight"] = ShardedTensor.from_rank_offsets(
            "decoder.final_proj.weight", proj[:, rank * cols : (rank + 1) * cols].clone(),
            (1, rank, world), replica_id=0)
        if rank == 0:
            torch.save({"decoder.layers.mlp.linear_fc1.weight": fc1,
                        "decoder.final_proj.weight": proj}, f"{out}/full.pt")
        os.makedirs(f"{out}/ck", exist_ok=True)
        dist_checkpointing.save(sd, f"{out}/ck")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
    """
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron")
    run_ranks(WRITER, root, str(root), writer=True)
    return root


def test_torch_dist_tensors_equal_the_full_tensors(written):
    full = gathered(written)
    assert (written / "ck" / "common.pt").is_file()
    with open_checkpoint(written / "ck") as ckpt:
        assert set(ckpt.tensors) == set(full)
        for name, want in full.items():
            got = ckpt.read(name)
            assert got.dtype == want.dtype and torch.equal(got, want), name
        stacked = ckpt.read_rows("decoder.layers.mlp.linear_fc1.weight", 1, 3)
        assert torch.equal(stacked, full["decoder.layers.mlp.linear_fc1.weight"][1:3])
