"""The GeometryMonitor on a sharded model: FSDP2 (``fully_shard``) on two gloo CPU ranks,
its Linear weights DTensors split by rows (uneven: 33 rows are 17 + 16). At every step both
ranks and a one-process monitor on a plain copy of the same weights record; the sharded
records (identical on both ranks) equal the one-process ones: unchanged fraction exactly,
``||dW||_F`` to 1e-12, stable rank, ``sigma_1`` and Sim_K to 1e-6 (both go through fp32
products; measured agreement 3e-9 to 3e-8), the lock step equal. Both spectral paths: the
exact Gram / full-range path (``exact_threshold`` 64) and the range finder with TSQR
(``exact_threshold=0``). A replicated weight is read whole; under DDP (whole weights on
every rank) the records are the one-process ones bit for bit."""

from __future__ import annotations

import json
import textwrap

import pytest
from gloo import run_ranks

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch, torch.distributed as dist, torch.multiprocessing as mp
    warnings.simplefilter("ignore")

    def weights_at(shape, i, step):
        g = torch.Generator().manual_seed(i)
        w0 = torch.randn(shape, generator=g) * 0.1
        u, v = torch.randn(shape[0], 2, generator=g), torch.randn(2, shape[1], generator=g)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(100 * i + step))
        return w0 + 1e-3 * step * (u @ v) + 1e-6 * step * noise

    def run(rank, world, store, out, exact_threshold):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Replicate, distribute_tensor
        from paramgeom import GeometryMonitor
        mesh = init_device_mesh("cpu", (world,))

        def build():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(48, 33), torch.nn.ReLU(),
                                       torch.nn.Linear(33, 100), torch.nn.Linear(100, 70))
        plain, sharded, replica = build(), build(), build()
        ddp = torch.nn.parallel.DistributedDataParallel(replica)  # whole weights per rank
        for m in list(sharded)[:3]:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m, mesh=mesh)
        # The last layer replicated (a DTensor holding the whole matrix on every rank).
        last = sharded[3]
        last.weight = torch.nn.Parameter(distribute_tensor(last.weight.detach(), mesh,
                                                           [Replicate()]))
        names = ["0.weight", "2.weight", "3.weight"]

        def set_step(step):
            with torch.no_grad():
                for i, name in enumerate(names):
                    full = weights_at(plain.get_parameter(name).shape, i, step)
                    plain.get_parameter(name).copy_(full)
                    p = sharded.get_parameter(name)
                    local = p.to_local()
                    if type(p.placements[0]).__name__ == "Shard":
                        rows = -(-full.shape[0] // world)
                        full = full[rank * rows : rank * rows + local.shape[0]]
                    local.copy_(full)
                    ddp.module.get_parameter(name).copy_(weights_at(p.shape, i, step))

        set_step(0)
        kw = dict(every=1, k=2, lock_window=2, modules=names, exact_threshold=exact_threshold)
        one = GeometryMonitor(plain, **kw) if rank == 0 else None
        mon = GeometryMonitor(sharded, **kw)
        under_ddp = GeometryMonitor(ddp.module, **kw)
        for step in range(1, 7):
            set_step(step)
            mon.step(step)
            under_ddp.step(step)
            if one is not None:
                one.step(step)
        result = {"records": mon.records, "matrix_records": mon.matrix_records,
                  "lock_step": mon.lock_step,
                  "ref_rows": [w.ref.shape[0] for w in mon._watched],
                  "ddp": under_ddp.matrix_records}
        if one is not None:
            result["one"] = {"records": one.records, "matrix_records": one.matrix_records,
                             "lock_step": one.lock_step}
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1], sys.argv[2], int(sys.argv[3])), nprocs=2)
    """
)

# Relative tolerance per figure: counts are exact; ||dW||_F is a float64 sum in another
# order; the spectral figures go through diff_matmul's fp32 products (1e-7 relative per
# product, the one-process path's own accuracy), summed over ranks in another order.
FIGURES = {"unchanged_fraction": 0.0, "dw_fro": 1e-12, "stable_rank": 1e-6, "sim_k": 1e-6,
           "s1": 1e-6}  # fmt: skip


def _close(a, b, key):
    if a is None or b is None:
        assert a is b, key
    else:
        assert a == pytest.approx(b, rel=FIGURES[key], abs=1e-12), (key, a, b)


@pytest.mark.parametrize("exact_threshold", [64, 0], ids=["exact", "range-finder"])
def test_sharded_records_equal_the_one_process_monitor(tmp_path, exact_threshold):
    run_ranks(SCRIPT, tmp_path, str(tmp_path / "out"), str(exact_threshold))
    r0 = json.loads((tmp_path / "out.0").read_text())
    r1 = json.loads((tmp_path / "out.1").read_text())
    assert r0["ref_rows"] == [17, 50, 70] and r1["ref_rows"] == [16, 50, 70]  # W_0's rows only
    one = r0["one"]
    assert r0["lock_step"] == r1["lock_step"] == one["lock_step"] is not None
    # Under DDP every rank holds the whole matrices: the one-process figures, bit for bit.
    for a, c in zip(r1["ddp"], one["matrix_records"], strict=True):
        assert all(a[key] == c[key] for key in FIGURES), (a, c)
    for rows in ("records", "matrix_records"):
        assert len(r0[rows]) == len(r1[rows]) == len(one[rows]) > 0
        for a, b, c in zip(r0[rows], r1[rows], one[rows], strict=True):
            for key in FIGURES:
                if key in c:
                    assert a[key] == b[key], key  # both ranks: the same record
                    _close(a[key], c[key], key)


def test_lockstep_batches_cut_by_group_bytes_and_count(monkeypatch):
    """A record's lockstep batches: whole matrices alone, runs of one group's sharded
    matrices together up to the byte budget (whole shapes: every rank cuts alike) and the
    count cap, in order, every matrix once."""
    import torch

    from paramgeom import monitor as mod

    def watched(name, shape, group):
        p = torch.nn.Parameter(torch.empty(shape))
        return mod._Watched(name, p, torch.empty(0), group=group)

    g1, g2 = object(), object()
    ws = [
        watched("a", (10, 10), g1),  # 200 bytes of bf16
        watched("b", (10, 10), g1),
        watched("c", (10, 20), g1),  # 400: passes the 500-byte budget with a and b
        watched("d", (10, 10), None),  # whole: alone
        watched("e", (10, 10), g1),
        watched("f", (10, 10), g2),  # another group
        watched("g", (40, 40), g2),  # alone over the budget: a batch of its own
        watched("h", (10, 10), g2),
    ]
    names = lambda batches: [[w.name for w in b] for b in batches]  # noqa: E731
    got = names(mod._lockstep_batches(ws, 500))
    assert got == [["a", "b"], ["c"], ["d"], ["e"], ["f"], ["g"], ["h"]]
    assert names(mod._lockstep_batches(ws, 1 << 30)) == [
        ["a", "b", "c"], ["d"], ["e"], ["f", "g", "h"]
    ]  # fmt: skip
    monkeypatch.setattr(mod, "LOCKSTEP_MAX", 2)
    assert names(mod._lockstep_batches(ws, 1 << 30)) == [
        ["a", "b"], ["c"], ["d"], ["e"], ["f", "g"], ["h"]
    ]  # fmt: skip
    assert names(mod._lockstep_batches([], 500)) == []
