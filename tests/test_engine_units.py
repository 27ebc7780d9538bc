"""Engine parts on their own: unit planning, byte-balanced shares, journal, prefetch queue."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.naming import parse_name
from paramgeom.checkpoints.pairing import PairedTensor, TensorRef
from paramgeom.checkpoints.reader import TensorInfo
from paramgeom.engine.journal import Journal, entry_key
from paramgeom.engine.loader import Prefetcher
from paramgeom.engine.plan import build_units, share_for_rank


def _pair(name: str, shape: tuple[int, ...]) -> PairedTensor:
    nbytes = 2 * int(torch.tensor(shape).prod()) if shape else 2
    info = TensorInfo(name, Path("f.safetensors"), torch.bfloat16, shape, nbytes)
    ref = TensorRef(name, info)
    return PairedTensor(name, ref, ref, parse_name(name, len(shape)), shape)


def test_units_group_split_experts_by_stack_shape_and_budget():
    pairs = [_pair("model.embed_tokens.weight", (10, 4))]
    pairs += [_pair(f"model.layers.0.mlp.experts.{e}.up_proj.weight", (4, 4)) for e in range(5)]
    pairs += [_pair(f"model.layers.0.mlp.experts.{e}.down_proj.weight", (4, 4)) for e in range(2)]
    pairs += [_pair("model.layers.1.mlp.experts.gate_proj", (3, 4, 4))]
    units = build_units(pairs, group_bytes=3 * 64)  # three experts' pairs per group
    kinds = [(u.kind, len(u.pairs)) for u in units]
    assert kinds == [("tensor", 1), ("experts", 3), ("experts", 2), ("experts", 2), ("stack", 1)]
    assert units[1].pairs[0].name.endswith("experts.0.up_proj.weight")
    assert sum(u.numel for u in units) == sum(int(torch.tensor(p.shape).prod()) for p in pairs)
    assert len({u.digest() for u in units}) == len(units)


def test_small_pairs_are_grouped_in_order_up_to_the_caps(monkeypatch):
    """Consecutive small pairs (any shape, not experts) form 'small' units of at most
    SMALL_UNIT_PAIRS pairs and SMALL_UNIT_BYTES bytes; a large pair or an expert group
    between them ends a group. Checkpoints of at most SMALL_GROUPING_MIN_PAIRS pairs keep one
    unit per tensor."""
    from paramgeom.engine import plan

    monkeypatch.setattr(plan, "SMALL_UNIT_PAIRS", 4)
    monkeypatch.setattr(plan, "SMALL_GROUPING_MIN_PAIRS", 0)
    pairs = [_pair(f"model.layers.{i}.input_layernorm.weight", (8,)) for i in range(6)]
    pairs += [_pair("model.layers.6.mlp.down_proj.weight", (1024, 512))]  # 2 MiB: not small
    pairs += [_pair("model.layers.7.self_attn.q_proj.weight", (16, 16))]
    pairs += [_pair(f"model.layers.8.mlp.experts.{e}.up_proj.weight", (4, 4)) for e in range(2)]
    pairs += [_pair("model.norm.weight", (8,))]
    units = build_units(pairs, group_bytes=1 << 30)
    kinds = [(u.kind, len(u.pairs)) for u in units]
    assert kinds == [("small", 4), ("small", 2), ("tensor", 1), ("small", 1), ("experts", 2),
                     ("small", 1)]  # fmt: skip
    assert [p.name for u in units for p in u.pairs] == [p.name for p in pairs]
    assert units[0].name == f"{pairs[0].name}..{pairs[3].name}" and units[3].name == pairs[7].name
    monkeypatch.setattr(plan, "SMALL_UNIT_BYTES", 3 * 32)  # three 32-byte norm pairs
    assert [len(u.pairs) for u in build_units(pairs[:6], group_bytes=1 << 30)] == [3, 3]
    monkeypatch.setattr(plan, "SMALL_GROUPING_MIN_PAIRS", 2048)
    assert [u.kind for u in build_units(pairs, group_bytes=1 << 30)].count("small") == 0
    many = [_pair(f"model.layers.{i}.input_layernorm.weight", (8,)) for i in range(20000)]
    monkeypatch.setattr(plan, "SMALL_UNIT_BYTES", 1 << 24)
    monkeypatch.setattr(plan, "SMALL_UNIT_PAIRS", 512)
    grouped = build_units(many, group_bytes=1 << 30)
    assert [len(u.pairs) for u in grouped] == [512] * 39 + [20000 - 39 * 512]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_cover_every_unit_once_and_balance_bytes(world):
    sizes = [7, 1, 30, 2, 2, 9, 13, 4, 4, 4, 1, 25]
    pairs = [_pair(f"model.layers.{i}.mlp.down_proj.weight", (s, 8)) for i, s in enumerate(sizes)]
    units = build_units(pairs, group_bytes=1 << 20)
    shares = [share_for_rank(units, r, world) for r in range(world)]
    flat = [u for s in shares for u in s]
    assert sorted(u.name for u in flat) == sorted(u.name for u in units)
    loads = [sum(u.nbytes for u in s) for s in shares]
    assert max(loads) - min(loads) <= max(u.nbytes for u in units)
    for s in shares:  # checkpoint order kept within a share
        idx = [units.index(u) for u in s]
        assert idx == sorted(idx)


def test_journal_round_trip_exact_floats_and_ignores_a_cut_line(tmp_path):
    j = Journal(tmp_path, "diff", rank=0)
    rows = [{"name": "a", "x": 0.1 + 0.2, "y": float("nan"), "z": None, "n": 2**40}]
    j.append("k1", "a", rows, ["note"])
    j.close()
    with open(j.path, "ab") as fh:  # a kill in the middle of the next line
        fh.write(b'{"key": "k2", "rows": [')
    Journal(tmp_path, "diff", rank=1).append("k3", "b", [{"name": "b"}], [])
    got = Journal(tmp_path, "diff").load()
    assert set(got) == {"k1", "k3"}
    assert got["k1"]["rows"][0]["x"] == 0.1 + 0.2
    assert got["k1"]["rows"][0]["y"] != got["k1"]["rows"][0]["y"]  # NaN survives
    assert got["k1"]["notes"] == ["note"]
    assert Journal(tmp_path, "trajectory").load() == {}


def test_entry_key_depends_on_identity_and_options_only():
    k = entry_key("u", ["f1|10|5|abc", "f2|1|1|d"], "opts")
    assert k == entry_key("u", ["f2|1|1|d", "f1|10|5|abc"], "opts")
    assert k != entry_key("u", ["f1|11|5|abc", "f2|1|1|d"], "opts")
    assert k != entry_key("u", ["f1|10|5|abc", "f2|1|1|d"], "opts2")
    assert k != entry_key("v", ["f1|10|5|abc", "f2|1|1|d"], "opts")


def test_journal_out_of_space_is_a_checkpoint_error(tmp_path, monkeypatch):
    import errno
    import os

    j = Journal(tmp_path, "diff")
    j.append("k1", "a", [{"name": "a"}], [])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="out of space") as info:
        j.append("k2", "b", [{"name": "b"}], [])
    assert "journal" in str(info.value) and "'b'" in str(info.value)
    monkeypatch.undo()
    j.close()
    assert "k1" in Journal(tmp_path, "diff").load()


def test_prefetcher_keeps_order_and_bounds_lookahead():
    started = []
    lock = threading.Lock()

    def load(i):
        with lock:
            started.append(i)
        return i * i

    seen = []
    with Prefetcher(range(6), load, depth=1) as q:
        for i, v in q:
            time.sleep(0.02)
            with lock:  # at most the current item, one queued and one being loaded
                assert max(started) <= i + 2
            seen.append((i, v))
    assert seen == [(i, i * i) for i in range(6)]


def test_prefetcher_reraises_in_the_consumer():
    def load(i):
        if i == 2:
            raise CheckpointError("f", "t2", "boom")
        return i

    got = []
    with pytest.raises(CheckpointError, match="boom"), Prefetcher(range(5), load) as q:
        for i, _ in q:
            got.append(i)
    assert got == [0, 1]


def test_journal_lines_are_json(tmp_path):
    j = Journal(tmp_path, "diff")
    j.append("k", "u", [{"name": "u", "v": 1.5}], [])
    j.close()
    line = j.path.read_text().splitlines()[0]
    assert json.loads(line)["rows"] == [{"name": "u", "v": 1.5}]
