"""The split of ``torch.chunk`` along one dimension, which DTensor's ``Shard(d)`` uses: one
rule for the sharded monitor (a reference's rows for this rank) and the verl reader (each
rank's piece of a saved DTensor)."""

from __future__ import annotations

__all__ = ["chunk_range"]


def chunk_range(n: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank`` among ``world`` when ``n`` rows are split as
    ``torch.chunk`` splits them: ``ceil(n / world)`` rows per rank in order, so the last
    ranks may hold fewer or none (``lo == hi``)."""
    if world < 1 or not 0 <= rank < world or n < 0:
        raise ValueError(
            f"chunk_range needs n >= 0 and 0 <= rank < world, got {n}, {rank}, {world}"
        )
    step = -(-n // world)
    lo = min(n, rank * step)
    return lo, min(n, lo + step)
