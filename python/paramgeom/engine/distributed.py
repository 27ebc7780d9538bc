"""Running the same command on many ranks under ``torchrun`` (torch.distributed).

DESIGN.md "Checkpoints": each rank takes a byte-balanced share of the units, writes its
finished units to its own journal file, and rank 0 writes the outputs from the journal once
every rank is done. gloo on CPU, nccl on CUDA. Outside torchrun: one rank, no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["Context", "context"]


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ``ok``; also the barrier before rank 0 writes."""
        if self.world == 1:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised_here = False


def context(device: str) -> Context:
    """The rank and world size from torchrun's environment, initialising the process group
    (gloo for ``device='cpu'``, nccl for CUDA) when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, False)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), False)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size(), True)
