"""One base, many tuned checkpoints: the base cache (engine/base_cache.py) and ``paramgeom
diff BASE T1 T2 ...``. Figures read through the cache must equal figures computed without
it, bit for bit; a damaged, foreign or unwritable cache costs time, never a figure."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from paramgeom.checkpoints.synth import SynthSpec, write_pair
from paramgeom.cli import main
from paramgeom.engine import base_cache
from paramgeom.engine.base_cache import BaseCache
from paramgeom.engine.compute import DiffOptions
from paramgeom.engine.diff import run_diff, tuned_labels

# Figures are compared bit for bit: one thread, so BLAS's summation order is fixed.
pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = {
    # hidden 128: every matrix is >= MIN_DIM wide, so every one goes through the cache
    "llama": SynthSpec(hidden=128, intermediate=256, vocab=256, heads=4, kv_heads=4, layers=2),
    "moe-split": SynthSpec(
        arch="moe", hidden=128, intermediate=160, vocab=256, heads=4, kv_heads=4, layers=1
    ),
    "moe-fused-fp8": SynthSpec(
        arch="moe",
        expert_layout="fused",
        dtype="fp8",
        hidden=128,
        intermediate=160,
        vocab=256,
        heads=4,
        kv_heads=4,
        layers=1,
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(SPECS))
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    pair = write_pair(root / "pair", SPECS[request.param], steps=(1, 2))
    return pair


def _csv(path) -> str:
    return path.read_text()


def _runs(out) -> list[dict]:
    return json.loads((out / "runs.json").read_text())["runs"]


def _diff(*args) -> int:
    return main(["diff", *map(str, args), "--quiet"])


def _cached(base, tuned, out, cache, **opts) -> dict:
    """``run_diff`` with a base cache: its base-cache counts (not in summary.json, which
    holds figures only)."""
    return run_diff(base, tuned, out, DiffOptions(**opts), quiet=True, base_cache=cache)["run"][
        "base_cache"
    ]


def test_second_checkpoint_reads_the_base_and_equals_an_uncached_diff(run, tmp_path):
    ck1, ck2 = run.root / "checkpoint-1", run.root / "checkpoint-2"
    assert _diff(run.base, ck1, ck2, "--out", tmp_path / "many") == 0
    first, second = _runs(tmp_path / "many")
    assert [r["folder"] for r in (first, second)] == ["checkpoint-1", "checkpoint-2"]
    written = first["base_cache"]["written"]
    assert written > 0 and first["base_cache"]["hits"] == 0
    assert second["base_cache"]["hits"] == written and second["base_cache"]["misses"] == 0
    for ck, folder in ((ck1, "checkpoint-1"), (ck2, "checkpoint-2")):
        assert _diff(run.base, ck, "--out", tmp_path / f"alone-{folder}") == 0
        assert _csv(tmp_path / "many" / folder / "tensors.csv") == _csv(
            tmp_path / f"alone-{folder}" / "tensors.csv"
        )


def test_row_streamed_matrices_use_the_cache(tmp_path):
    pair = write_pair(tmp_path / "pair", SPECS["llama"], steps=(1,))
    cache, ck1 = tmp_path / "cache", pair.root / "checkpoint-1"
    a = _cached(pair.base, pair.tuned, tmp_path / "a", cache, chunk_bytes=1 << 16)
    b = _cached(pair.base, ck1, tmp_path / "b", cache, chunk_bytes=1 << 16)
    assert _diff(pair.base, ck1, "--out", tmp_path / "c", "--chunk-bytes", "64KiB") == 0
    assert a["written"] > 0 and b["hits"] == a["written"]
    assert _csv(tmp_path / "b" / "tensors.csv") == _csv(tmp_path / "c" / "tensors.csv")
    notes = json.loads((tmp_path / "b" / "summary.json").read_text())["notes"]
    assert any("row blocks" in n for n in notes)  # the streamed path did run


def test_a_copy_of_the_base_elsewhere_hits(tmp_path):
    pair = write_pair(tmp_path / "pair", SPECS["llama"], steps=(1,))
    copy = tmp_path / "copy"
    shutil.copytree(pair.base, copy)
    cache = tmp_path / "cache"
    assert _diff(pair.base, pair.tuned, "--out", tmp_path / "a", "--base-cache", cache) == 0
    b = _cached(copy, pair.tuned, tmp_path / "b", cache)
    assert b["misses"] == 0 and b["hits"] > 0
    assert _csv(tmp_path / "a" / "tensors.csv") == _csv(tmp_path / "b" / "tensors.csv")


def test_damaged_cache_files_are_recomputed_not_believed(tmp_path):
    pair = write_pair(tmp_path / "pair", SPECS["llama"], steps=(1,))
    cache = tmp_path / "cache"
    assert _diff(pair.base, pair.tuned, "--out", tmp_path / "a", "--base-cache", cache) == 0
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) >= 4
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: len(raw) // 2])  # cut
    raw = bytearray(files[1].read_bytes())
    raw[-9] ^= 0x40  # one changed bit in a stored value: the digest no longer matches
    files[1].write_bytes(bytes(raw))
    files[2].write_bytes(files[3].read_bytes())  # another matrix's (valid) entry
    (files[4] if len(files) > 4 else files[3]).write_bytes(b"\xff" * 64)  # garbage
    ck1 = pair.root / "checkpoint-1"
    b = _cached(pair.base, ck1, tmp_path / "b", cache)
    assert _diff(pair.base, ck1, "--out", tmp_path / "c") == 0
    assert b["rejected"] == 4 and b["written"] == 4
    assert _csv(tmp_path / "b" / "tensors.csv") == _csv(tmp_path / "c" / "tensors.csv")
    # and they were rewritten whole: a third run hits everywhere
    d = _cached(pair.base, ck1, tmp_path / "d", cache)
    assert d["misses"] == 0 and d["rejected"] == 0


def test_a_failed_cache_write_is_one_note_and_the_figures_stay(tmp_path, monkeypatch):
    pair = write_pair(tmp_path / "pair", SPECS["llama"])

    real = base_cache._write_whole

    def full(path, raw):  # the disk fills during the write
        real(path, raw[: len(raw) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(base_cache, "_write_whole", full)
    a = _cached(pair.base, pair.tuned, tmp_path / "a", tmp_path / "cache")
    assert _diff(pair.base, pair.tuned, "--out", tmp_path / "b") == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert a["write_error"].endswith("No space left on device") and a["written"] == 0
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1  # one attempt only
    assert sum("base cache" in n and "cannot write" in n for n in summary["notes"]) == 1
    # the half-written file is never believed: a later run rejects and rewrites it
    monkeypatch.undo()
    again = _cached(pair.base, pair.tuned, tmp_path / "c", tmp_path / "cache")
    assert again["rejected"] == 1 and again["written"] >= 1
    assert _csv(tmp_path / "a" / "tensors.csv") == _csv(tmp_path / "b" / "tensors.csv")


def test_a_base_cache_that_cannot_be_a_folder_is_bad_input(tmp_path, capsys):
    pair = write_pair(tmp_path / "pair", SPECS["llama"])
    (tmp_path / "file").write_text("x")
    rc = _diff(pair.base, pair.tuned, "--out", tmp_path / "a", "--base-cache", tmp_path / "file")
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "file" in err[0] and "Traceback" not in err[0]
    assert "cannot create the base cache folder" in err[0]


def test_no_base_cache_and_statistics_only_write_none(tmp_path):
    pair = write_pair(tmp_path / "pair", SPECS["llama"], steps=(1,))
    ck1 = pair.root / "checkpoint-1"
    assert _diff(pair.base, pair.tuned, ck1, "--out", tmp_path / "a", "--no-base-cache") == 0
    assert not (tmp_path / "a" / "base-cache").exists()
    assert all(r["base_cache"] is None for r in _runs(tmp_path / "a"))
    assert _diff(pair.base, pair.tuned, ck1, "--out", tmp_path / "b", "--no-spectra") == 0
    assert not list((tmp_path / "b").rglob("*.safetensors"))


def test_keys_follow_the_values_and_the_parameters(tmp_path):
    cache = BaseCache(tmp_path, "auto|cpu")
    w = torch.randn(130, 140).to(torch.bfloat16)
    same = w.clone()
    changed = w.clone()
    changed[7, 9] = changed[7, 9] + 1
    assert cache.key([w], "exact", 16) == cache.key([same], "exact", 16)
    assert cache.key([w], "exact", 16) == cache.key([w[:50], w[50:]], "exact", 16)
    assert cache.key([w], "exact", 16) != cache.key([changed], "exact", 16)
    assert cache.key([w], "exact", 16) != cache.key([w], "exact", 17)
    assert cache.key([w], "exact", 16) != cache.key([w.reshape(140, 130)], "exact", 16)
    assert cache.key([w], "exact", 16) != BaseCache(tmp_path, "torch|cpu").key([w], "exact", 16)


def test_get_returns_exactly_what_put_stored(tmp_path):
    cache = BaseCache(tmp_path, "auto|cpu")
    data = {"U": torch.randn(5, 2, dtype=torch.float64), "S": torch.tensor([2.0, 1.0]).double()}
    cache.put("ab" * 32, data)
    got = cache.get("ab" * 32, {"U": (5, 2), "S": (2,)})
    assert got is not None and all(torch.equal(got[k], data[k]) for k in data)
    assert cache.get("ab" * 32, {"U": (5, 3), "S": (2,)}) is None  # other shapes: a miss
    assert cache.get("cd" * 32, {"U": (5, 2), "S": (2,)}) is None
    cache.put("ef" * 32, {"S": torch.tensor([float("nan")], dtype=torch.float64)})
    assert cache.get("ef" * 32, {"S": (1,)}) is None  # non-finite: never believed
    assert (cache.counts.hits, cache.counts.rejected) == (1, 2)


def test_huge_fifo_and_folder_entries_are_misses_without_blocking(tmp_path):
    import os

    cache = BaseCache(tmp_path, "auto|cpu")
    shapes = {"S": (2,)}
    cache.put("ab" * 32, {"S": torch.tensor([2.0, 1.0], dtype=torch.float64)})
    path = tmp_path / "ab" / f"{'ab' * 32}.safetensors"
    with open(path, "ab") as fh:  # the right entry, grown past what two values need
        fh.truncate(1 << 20)
    fifo = tmp_path / "cd" / f"{'cd' * 32}.safetensors"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    folder = tmp_path / "ef" / f"{'ef' * 32}.safetensors"
    folder.mkdir(parents=True)
    for key in ("ab", "cd", "ef"):
        assert cache.get(key * 32, shapes) is None
    assert (cache.counts.rejected, cache.counts.hits) == (3, 0)


def test_tuned_labels_are_unique_folder_names():
    labels = tuned_labels(["runs/a/checkpoint-100", "runs/b/checkpoint-100/", "org/model@v2", "."])
    assert labels == ["checkpoint-100", "checkpoint-100-2", "model@v2", "tuned"]


def test_experts_missing_from_the_cache_are_computed_alone(tmp_path, monkeypatch):
    """Batched experts whose entries are partly gone: only the missing ones are computed
    (one batch of them) and stored again, and the figures equal an uncached diff's."""
    from safetensors import safe_open

    from paramgeom.engine import compute

    spec = SynthSpec(arch="moe", expert_layout="fused", experts=6, hidden=128,
                     intermediate=160, vocab=256, heads=4, kv_heads=4, layers=1)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, steps=(1,))
    cache, ck1 = tmp_path / "cache", pair.root / "checkpoint-1"
    assert _diff(pair.base, pair.tuned, "--out", tmp_path / "a", "--base-cache", cache) == 0
    batched = []
    for f in sorted(cache.rglob("*.safetensors")):
        with safe_open(str(f), "pt") as entry:
            if set(entry.keys()) == {"U", "S", "V"}:  # a batched expert's entry
                batched.append(f)
    assert len(batched) >= 8
    gone = batched[::3]
    for f in gone:
        f.unlink()
    computed = []
    real = compute.batched_top_bases

    def spy(a, k):
        computed.append(int(a.shape[0]))
        return real(a, k)

    monkeypatch.setattr(compute, "batched_top_bases", spy)
    b = _cached(pair.base, ck1, tmp_path / "b", cache)
    assert sum(computed) == len(gone) and b["written"] == len(gone)
    assert _diff(pair.base, ck1, "--out", tmp_path / "c", "--no-base-cache") == 0
    assert _csv(tmp_path / "b" / "tensors.csv") == _csv(tmp_path / "c" / "tensors.csv")
