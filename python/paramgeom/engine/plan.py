"""Units of work: which tensors are computed together, and which rank computes them.

A unit is what the journal records as done: one tensor; a 3-D expert stack (its experts
computed in batches); or a run of same-shape per-expert matrices of one stack (batched the
same way). Units are balanced across ranks by bytes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from paramgeom.checkpoints.pairing import PairedTensor

__all__ = ["Unit", "build_units", "share_for_rank"]


@dataclass(frozen=True)
class Unit:
    """``kind``: 'tensor' (one pair of any shape), 'stack' (one fused ``[E, m, n]`` expert
    pair), 'experts' (several 2-D per-expert pairs of one stack, same shape) or 'small'
    (consecutive small pairs of any shapes, computed and journaled together)."""

    kind: str
    pairs: tuple[PairedTensor, ...]

    @property
    def name(self) -> str:
        if self.kind in ("experts", "small") and len(self.pairs) > 1:
            return f"{self.pairs[0].name}..{self.pairs[-1].name}"
        return self.pairs[0].name

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pairs)

    @property
    def numel(self) -> int:
        return sum(math.prod(p.shape) for p in self.pairs)

    def digest(self) -> str:
        """Stable id of the unit's contents (names and shapes), for the journal key."""
        text = ";".join(f"{p.base.name}>{p.name}:{p.shape}" for p in self.pairs)
        return hashlib.sha256(f"{self.kind}|{text}".encode()).hexdigest()[:32]


SMALL_PAIR_BYTES = 1 << 18
"""A pair (both sides) of at most this many bytes is small: consecutive small pairs form one
unit of at most :data:`SMALL_UNIT_PAIRS` pairs and :data:`SMALL_UNIT_BYTES` bytes, read,
computed (same-shape matrices in one batched call) and journaled together, so that the
per-unit costs (a journal fsync, a hand-over between the reading thread and the compute,
the input check, dozens of small LAPACK calls) are paid once per group, not per tensor: a
model stored as tens of thousands of small tensors (norms, biases, per-expert scales) would
otherwise spend minutes on them."""
SMALL_UNIT_PAIRS = 512
SMALL_UNIT_BYTES = 1 << 24
SMALL_GROUPING_MIN_PAIRS = 2048
"""Small pairs are grouped only in checkpoints of more pairs than this: below it the
per-unit costs add up to seconds, and one unit per tensor keeps the journal (what a rerun
after a crash skips) at its finest."""


def build_units(pairs: list[PairedTensor], group_bytes: int) -> list[Unit]:
    """Units in the tuned checkpoint's order. Consecutive 2-D per-expert pairs of the same
    stack and shape are grouped up to ``group_bytes`` (their batched spectra then cost one
    call); in checkpoints of more than :data:`SMALL_GROUPING_MIN_PAIRS` pairs, consecutive
    small pairs (:data:`SMALL_PAIR_BYTES`, and at most ``group_bytes``) are grouped as 'small'
    units; everything else (an expert matrix larger than
    ``group_bytes`` too) is a unit of its own."""
    units: list[Unit] = []
    group: list[PairedTensor] = []
    small: list[PairedTensor] = []
    small_cap = min(SMALL_PAIR_BYTES, group_bytes) if len(pairs) > SMALL_GROUPING_MIN_PAIRS else -1

    def flush() -> None:
        if group:
            units.append(Unit("experts", tuple(group)))
            group.clear()

    small_bytes = [0]  # bytes in ``small`` (a running sum: groups hold hundreds of pairs)

    def flush_small() -> None:
        if small:
            units.append(Unit("small", tuple(small)))
            small.clear()
            small_bytes[0] = 0

    for pair in pairs:
        expert_matrix = (
            pair.meta.expert is not None and len(pair.shape) == 2 and pair.nbytes <= group_bytes
        )
        fused_stack = pair.meta.module == "expert" and len(pair.shape) == 3
        if not expert_matrix and not fused_stack and pair.nbytes <= small_cap:
            flush()
            if small and (
                len(small) >= SMALL_UNIT_PAIRS
                or small_bytes[0] + pair.nbytes > min(SMALL_UNIT_BYTES, group_bytes)
            ):
                flush_small()
            small.append(pair)
            small_bytes[0] += pair.nbytes
            continue
        flush_small()
        if expert_matrix:
            if group and (
                group[0].meta.stack != pair.meta.stack
                or group[0].shape != pair.shape
                or sum(p.nbytes for p in group) + pair.nbytes > group_bytes
            ):
                flush()
            group.append(pair)
            continue
        flush()
        units.append(Unit("stack" if fused_stack else "tensor", (pair,)))
    flush()
    flush_small()
    return units


def share_for_rank(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """The units rank ``rank`` of ``world`` computes: greedy largest-first assignment to the
    least-loaded rank (ties to the lower rank), so shares differ by at most one unit's bytes.
    Deterministic: every rank computes the same assignment. Returned in checkpoint order."""
    if world <= 1:
        return list(units)
    load = [0] * world
    owner: dict[int, int] = {}
    order = sorted(range(len(units)), key=lambda i: (-units[i].nbytes, i))
    for i in order:
        r = min(range(world), key=lambda j: (load[j], j))
        owner[i] = r
        load[r] += units[i].nbytes
    return [u for i, u in enumerate(units) if owner[i] == rank]
