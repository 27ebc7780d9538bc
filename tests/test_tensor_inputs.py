"""Tensors the kernels cannot read (tensor subclasses such as DTensor, meta tensors, sparse
tensors, storage-less parameters) are one clear ``TypeError`` at each op's API, never a
crash in a C++ kernel: a DTensor handed to the CPU kernel used to segfault the process
(the GeometryMonitor on DTensor-sharded weights took its training run down with it)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from gloo import run_ranks

import paramgeom
from paramgeom.monitor import GeometryMonitor


class _Wrapper(torch.Tensor):
    """A trivial tensor subclass (the shape of quantised and wrapper tensors)."""


def _bad_inputs() -> dict[str, tuple[torch.Tensor, str]]:
    plain = torch.zeros(4, 4)
    return {
        "subclass": (plain.as_subclass(_Wrapper), "tensor subclass"),
        "meta": (torch.empty(4, 4, device="meta"), "meta device"),
        "sparse": (plain.to_sparse(), "layout torch.sparse_coo"),
        "uninitialized": (torch.nn.UninitializedParameter(), "tensor subclass"),
    }


def _calls(bad: torch.Tensor) -> dict[str, tuple[str, object]]:
    """Each op with ``bad`` in one argument (the others fine): (argument name, call)."""
    w = torch.zeros(4, 4)
    x = torch.zeros(4, 2)
    G = torch.zeros(4, 4, dtype=torch.float64)
    return {
        "diff_stats w0": ("w0", lambda: paramgeom.diff_stats(bad, w)),
        "diff_stats w1": ("w1", lambda: paramgeom.diff_stats(w, bad)),
        "diff_matmul w1": ("w1", lambda: paramgeom.diff_matmul(w, bad, x)),
        "diff_matmul x": ("x", lambda: paramgeom.diff_matmul(w, w, bad)),
        "gram_update x": ("x", lambda: paramgeom.gram_update(G, bad)),
        "gram_update G": ("G", lambda: paramgeom.gram_update(bad, w)),
    }


@pytest.mark.parametrize("kind", list(_bad_inputs()))
@pytest.mark.parametrize("call", list(_calls(torch.zeros(1))))
def test_unreadable_tensors_are_a_type_error(kind, call):
    bad, words = _bad_inputs()[kind]
    name, fn = _calls(bad)[call]
    with pytest.raises(TypeError) as info:
        fn()
    message = str(info.value)
    assert message.startswith(name + " ") and words in message, message
    assert "\n" not in message


def test_scale_grids_are_checked_too():
    q = torch.zeros(4, 4, dtype=torch.float8_e4m3fn)
    s = torch.ones(1, 1)
    with pytest.raises(TypeError, match="scale_inv of w1 is on the meta device"):
        paramgeom.diff_stats(q, q, scale_inv=(s, torch.ones(1, 1, device="meta")))


def test_parameters_and_plain_tensors_still_pass():
    w = torch.nn.Parameter(torch.randn(4, 4))
    stats = paramgeom.diff_stats(w, w.detach().clone())
    assert stats.n_equal == 16


def test_monitor_refuses_subclass_weights_at_construction():
    model = torch.nn.Linear(4, 4)
    model.weight = torch.nn.Parameter(model.weight.detach().as_subclass(_Wrapper))
    with pytest.raises(
        TypeError,
        match=r"^weight: a _Wrapper parameter \(a tensor subclass "
        "other than DTensor",
    ):
        GeometryMonitor(model, modules=["weight"])


# Two gloo ranks on the CPU, each holding one row shard of a DTensor weight: the ops must
# raise (the process survives: exit 0, not SIGSEGV); the monitor reads row shards
# (tests/test_monitor_sharded.py) and refuses a column-sharded weight.
_DTENSOR_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    def run(rank, world, store_path, out):
        dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                                world_size=world)
        import paramgeom
        from paramgeom.monitor import GeometryMonitor
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        w = distribute_tensor(torch.randn(64, 32), mesh, [Shard(0)])
        seen = {}
        for name, call in {
            "diff_stats": lambda: paramgeom.diff_stats(w, w),
            "diff_matmul": lambda: paramgeom.diff_matmul(w, w, torch.zeros(32, 2)),
            "gram_update": lambda: paramgeom.gram_update(
                torch.zeros(32, 32, dtype=torch.float64), w),
        }.items():
            try:
                call()
                seen[name] = "no error"
            except TypeError as exc:
                seen[name] = str(exc)
        model = torch.nn.Linear(32, 64, bias=False)
        model.weight = torch.nn.Parameter(distribute_tensor(model.weight.detach(), mesh,
                                                            [Shard(1)]))
        try:
            GeometryMonitor(model)
            seen["monitor"] = "no error"
        except TypeError as exc:
            seen["monitor"] = str(exc)
        with open(f"{out}.{rank}", "w") as f:
            json.dump(seen, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        store, out = sys.argv[1], sys.argv[2]
        mp.spawn(run, args=(2, store, out), nprocs=2)
    """
)


def test_dtensor_weights_on_two_gloo_ranks(tmp_path):
    run_ranks(_DTENSOR_SCRIPT, tmp_path, str(tmp_path / "seen"))
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"seen.{rank}").read_text())
        for op in ("diff_stats", "diff_matmul", "gram_update"):
            assert "DTensor, a tensor subclass" in seen[op], seen[op]
            assert ".to_local()" in seen[op]
        assert seen["monitor"].startswith("weight: a DTensor with placements (Shard(dim=1),)")
