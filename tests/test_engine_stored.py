"""``paramgeom diff`` hands the scan's kernel what the file holds: block-scaled FP8 bytes
with their scale grids, fp32 / fp16 values with an in-kernel bf16 rounding, bf16 as stored.
The figures are those of the host path (dequantise / round on the host first) exactly,
whole and in row blocks; mixed pairs still take the host path."""

from __future__ import annotations

import pytest
import torch

import paramgeom
from paramgeom.checkpoints.synth import SynthSpec, write_pair
from paramgeom.cli import main
from paramgeom.engine import compute, loader
from paramgeom.report.tables import read_table


def _pair(tmp_path, dtype, arch="llama", layout="split"):
    spec = SynthSpec(arch=arch, hidden=160, layers=1, intermediate=272, vocab=200, heads=4,
                     kv_heads=2, experts=3 if arch == "moe" else 0, expert_layout=layout,
                     dtype=dtype, update_rank=3, update_scale=2e-2, changed_fraction=0.6,
                     seed=4)  # fmt: skip
    return write_pair(tmp_path / f"pair_{dtype}_{arch}_{layout}", spec, tuned_prefix="")


def _diff(pair, out, *extra) -> dict[str, dict]:
    args = ["diff", str(pair.base), str(pair.tuned), "--out", str(out), "--rank", "8"]
    assert main([*args, "--quiet", *extra]) == 0
    return {r["name"]: r for r in read_table(out / "tensors.parquet")}


def _spy(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = paramgeom.diff_stats

    def spy(w0, w1, *args, **kw):
        calls.append({"dtype": w0.dtype, "shape": tuple(w0.shape), **kw})
        return real(w0, w1, *args, **kw)

    monkeypatch.setattr(paramgeom, "diff_stats", spy)
    return calls


@pytest.mark.parametrize(
    "dtype,arch,layout",
    [("fp8", "llama", "split"), ("fp32", "llama", "split"), ("bf16", "llama", "split"),
     ("fp8", "moe", "split"), ("fp8", "moe", "fused"), ("fp16", "moe", "fused")],
)  # fmt: skip
@pytest.mark.parametrize("blocks", [False, True], ids=["whole", "row-blocks"])
def test_stored_read_gives_the_host_path_figures(
    tmp_path, monkeypatch, dtype, arch, layout, blocks
):
    pair = _pair(tmp_path, dtype, arch, layout)
    # 64 KiB chunks: every weight matrix is read in row blocks (not 128-row aligned).
    extra = ["--chunk-bytes", str(1 << 16)] if blocks else []
    calls = _spy(monkeypatch)
    stored = _diff(pair, tmp_path / "stored", *extra)
    kinds = {(c["dtype"], c.get("cast"), "scale_inv" in c) for c in calls}
    if dtype == "fp8":
        assert (torch.float8_e4m3fn, None, True) in kinds  # the kernel read fp8 bytes
    elif dtype in ("fp32", "fp16"):
        want = torch.float32 if dtype == "fp32" else torch.float16
        assert (want, "bf16", False) in kinds  # rounded inside the kernel's read
    else:
        assert kinds == {(torch.bfloat16, None, False)}
    if blocks and dtype == "fp8" and arch == "llama":
        assert any(c.get("scale_row0", 0) > 0 for c in calls)
    monkeypatch.setattr(compute, "stored_stats_args", lambda s0, s1: None)  # the host path
    host = _diff(pair, tmp_path / "host", *extra)
    assert stored.keys() == host.keys() and stored
    for name, row in stored.items():
        for key, value in row.items():
            assert _same(value, host[name][key]), (name, key, value, host[name][key])


def _same(a, b) -> bool:
    """Counts, names and flags exactly; float figures to 1e-12 relative: a scaled read
    sums row by row where the host path's contiguous bf16 copy sums as one flat run, so
    the float64 sums may round differently in the last bits (same values summed)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b) or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def test_mixed_pairs_take_the_host_path():
    """Different dtypes, or one side scaled: both sides are materialised as bf16 first."""
    q = torch.zeros(4, 4, dtype=torch.float8_e4m3fn)
    s = torch.ones(1, 1)
    bf = loader.Stored(torch.zeros(4, 4, dtype=torch.bfloat16))
    assert loader.stored_stats_args(loader.Stored(torch.zeros(4, 4)), bf) is None
    assert loader.stored_stats_args(loader.Stored(q, s), loader.Stored(q)) is None
    assert (
        loader.stored_stats_args(loader.Stored(q[None], s[None]), loader.Stored(q[None], s[None]))
        is None
    )
    args = loader.stored_stats_args(loader.Stored(q, s, 128), loader.Stored(q, s, 128))
    assert args["scale_row0"] == 128 and args["scale_inv"][0] is s
    assert loader.stored_stats_args(bf, bf) == {"w0": bf.values, "w1": bf.values}
    half = loader.Stored(torch.zeros(4, 4, dtype=torch.float16))
    assert loader.stored_stats_args(half, half)["cast"] == "bf16"


@pytest.mark.parametrize("dtype", ["fp8", "fp32"])
def test_trajectory_reads_stored_steps(tmp_path, monkeypatch, dtype):
    from paramgeom.engine import trajectory

    spec = SynthSpec(arch="moe", hidden=96, layers=1, intermediate=160, vocab=128, experts=2,
                     expert_layout="fused", dtype=dtype, update_rank=2, update_scale=2e-2,
                     seed=5)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, steps=[10, 20])
    ckpts = [str(p) for p in pair.checkpoints.values()]

    def run(out):
        args = ["trajectory", str(pair.base), *ckpts, "--out", str(out), "--k", "2", "--quiet"]
        assert main(args) == 0
        return {
            (r["name"], r["expert"], r["step"]): r for r in read_table(out / "trajectory.parquet")
        }

    calls = _spy(monkeypatch)
    stored = run(tmp_path / "stored")
    want = torch.float8_e4m3fn if dtype == "fp8" else torch.float32
    assert any(c["dtype"] == want for c in calls)
    monkeypatch.setattr(trajectory, "stored_stats_args", lambda s0, s1: None)
    host = run(tmp_path / "host")
    assert stored.keys() == host.keys() and stored
    for key, row in stored.items():
        for col, value in row.items():
            assert _same(value, host[key][col]), (key, col, value, host[key][col])
