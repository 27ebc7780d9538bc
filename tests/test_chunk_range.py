"""``paramgeom._chunk.chunk_range`` is torch.chunk's split (DTensor Shard(d)), for every
size, world and rank, including sizes smaller than the world (empty pieces)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from paramgeom._chunk import chunk_range


@given(n=st.integers(0, 300), world=st.integers(1, 17))
def test_chunk_range_is_torch_chunk(n, world):
    pieces = torch.arange(n).chunk(world) if n else ()
    got = [chunk_range(n, world, r) for r in range(world)]
    for r, (lo, hi) in enumerate(got):
        want = pieces[r].tolist() if r < len(pieces) else []
        assert list(range(lo, hi)) == want
    assert sum(hi - lo for lo, hi in got) == n


@pytest.mark.parametrize("args", [(5, 0, 0), (5, 2, 2), (5, 2, -1), (-1, 2, 0)])
def test_chunk_range_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        chunk_range(*args)
