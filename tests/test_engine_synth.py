"""``paramgeom diff`` / ``trajectory`` on ``paramgeom synth`` folders: MoE (split and fused),
FP8 block scales, shards, tied embeddings; figures against float64 oracles computed here
from the files themselves (safetensors + numpy), independently of the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from paramgeom.checkpoints.synth import SynthSpec, write_pair
from paramgeom.cli import main
from paramgeom.engine.diff import unconverged_note
from paramgeom.report.tables import read_table

ETA = 1e-3


def _load(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                out[k] = fh.get_tensor(k)
    return out


def _dequant(t: dict[str, torch.Tensor], name: str) -> np.ndarray:
    """float64 values of a stored tensor, FP8 block scales applied, then rounded to bf16."""
    w = t[name]
    scale = t.get(name + "_scale_inv")
    x = w.double().numpy()
    if scale is not None:
        s = scale.double().numpy()
        s = np.repeat(np.repeat(s, 128, axis=-2), 128, axis=-1)[..., : x.shape[-2], : x.shape[-1]]
        x = (torch.from_numpy(x).float() * torch.from_numpy(s).float()).double().numpy()
    return torch.from_numpy(x).to(torch.bfloat16).double().numpy()


def _oracle_unchanged(pair) -> tuple[int, int]:
    base, tuned = _load(pair.base), _load(pair.tuned)
    hits = total = 0
    for bname, tname in pair.tuned_names.items():
        if bname not in base or bname.endswith("_scale_inv"):
            continue
        a, b = _dequant(base, bname), _dequant(tuned, tname)
        hits += int(np.count_nonzero(np.abs(b - a) <= ETA * np.maximum(np.abs(a), np.abs(b))))
        total += a.size
    return hits, total


@pytest.mark.parametrize(
    ("arch", "layout", "dtype", "shards", "tie"),
    [
        ("llama", "split", "bf16", 3, True),
        ("moe", "split", "bf16", 2, False),
        ("moe", "fused", "bf16", 1, False),
        ("moe", "fused", "fp8", 2, False),
        ("llama", "split", "fp8", 1, False),
    ],
)
def test_diff_on_synth_matches_oracle(tmp_path, arch, layout, dtype, shards, tie):
    spec = SynthSpec(arch=arch, hidden=64, layers=2, intermediate=96, vocab=160, heads=4,
                     kv_heads=2, experts=4 if arch == "moe" else 0, expert_layout=layout,
                     dtype=dtype, tie_embeddings=tie, shards=shards, update_rank=3,
                     update_scale=2e-2, changed_fraction=0.7, seed=1)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, tuned_prefix="")
    out = tmp_path / "out"
    assert main(["diff", str(pair.base), str(pair.tuned), "--out", str(out), "--rank", "8",
                 "--quiet"]) == 0  # fmt: skip
    rows = read_table(out / "tensors.parquet")
    summary = json.loads((out / "summary.json").read_text())
    hits, total = _oracle_unchanged(pair)
    assert summary["model"]["numel"] == total
    assert summary["model"]["unchanged_fraction"] == pytest.approx(hits / total, rel=1e-14)
    assert summary["missing_in_base"] == [] and summary["missing_in_tuned"] == []
    by_name = {r["name"]: r for r in rows}
    if arch == "moe":
        experts = [r for r in rows if r["module"] == "expert"]
        assert len(experts) == 2 * 3 * 4  # layers x (gate, up, down) x experts
        assert all(r["stack"] is not None and r["expert"] is not None for r in experts)
        assert set(summary["by_stack"]) == {r["stack"] for r in experts}
    if dtype == "bf16":
        # Low-rank updates of known rank: dW's stable rank from the file must be below it.
        for bname, (rank, s) in pair.updates.items():
            row = by_name.get(pair.tuned_names.get(bname.split("[")[0], bname) +
                              (bname[bname.index("["):] if "[" in bname else ""))  # fmt: skip
            if row is None or rank == 0 or row["stable_rank"] is None:
                continue
            want = float((s**2).sum() / s[0] ** 2)
            assert row["stable_rank"] == pytest.approx(want, rel=0.05), bname
    if tie:
        assert summary["tied"] and not any(r["module"] == "lm_head" for r in rows)


@pytest.mark.parametrize("layout", ["split", "fused"])
def test_wide_experts_one_at_a_time_match_oracle(tmp_path, layout, monkeypatch):
    # Experts with min(m, n) >= PER_MATRIX_MIN_P leave the batched path for matrix_row's
    # (subset solver, float32 window then float64 Ritz): every figure against float64.
    from scipy.linalg import subspace_angles

    from paramgeom.engine import compute
    from paramgeom.engine.compute import PER_MATRIX_MIN_P

    def batched(*args, **kwargs):
        raise AssertionError("wide experts must not take the batched path")

    monkeypatch.setattr(compute.linalg, "batched_svdvals", batched)
    monkeypatch.setattr(compute.linalg, "batched_rotation", batched)

    spec = SynthSpec(arch="moe", hidden=PER_MATRIX_MIN_P, layers=1, intermediate=288,
                     vocab=64, heads=4, kv_heads=2, experts=2, expert_layout=layout,
                     update_rank=3, update_scale=2e-2, changed_fraction=0.7, seed=5)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, tuned_prefix="")
    out = tmp_path / "out"
    assert main(["diff", str(pair.base), str(pair.tuned), "--out", str(out), "--quiet"]) == 0
    base, tuned = _load(pair.base), _load(pair.tuned)
    experts = [r for r in read_table(out / "tensors.parquet") if r["module"] == "expert"]
    assert len(experts) == 3 * 2
    for r in experts:
        name, bname = r["name"], r["base_name"]
        tname = pair.tuned_names.get(bname, bname)
        if "[" in name:
            e = int(name[name.index("[") + 1 : -1])
            w0, w1 = base[bname][e].double().numpy(), tuned[tname][e].double().numpy()
        else:
            w0, w1 = base[bname].double().numpy(), tuned[tname].double().numpy()
        assert min(w0.shape) >= PER_MATRIX_MIN_P
        k = min(w0.shape) // 8
        assert r["rank_k"] == k
        s = np.linalg.svd(w1 - w0, compute_uv=False)
        u0, s0, v0 = np.linalg.svd(w0)
        u1, s1, v1 = np.linalg.svd(w1)
        if s[0] == 0:  # an expert the update left alone
            assert r["stable_rank"] == 0.0 and r["angle_right_max"] < 1e-9
            continue
        assert r["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-9), name
        p = s / s.sum()
        assert r["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
        drift = np.linalg.norm(s1[:k] - s0[:k]) / np.linalg.norm(s0[:k])
        assert r["spectral_drift"] == pytest.approx(drift, rel=1e-6), name
        right = np.degrees(subspace_angles(v0[:k].T, v1[:k].T))
        assert r["angle_right_max"] == pytest.approx(right.max(), abs=1e-3), name
        if r["angle_left_max"] is not None:
            left = np.degrees(subspace_angles(u0[:, :k], u1[:, :k]))
            assert r["angle_left_max"] == pytest.approx(left.max(), abs=1e-3), name


def test_trajectory_on_synth_recovers_rank_and_locks(tmp_path):
    spec = SynthSpec(arch="llama", hidden=96, layers=2, intermediate=128, vocab=128,
                     update_rank=2, update_scale=2e-2, seed=3)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, steps=[10, 20, 30, 40])
    out = tmp_path / "out"
    ckpts = [str(p) for p in pair.checkpoints.values()]
    assert main(["trajectory", str(pair.base), *ckpts, "--out", str(out), "--k", "2",
                 "--quiet"]) == 0  # fmt: skip
    rows = read_table(out / "trajectory.parquet")
    assert {r["step"] for r in rows} == {10, 20, 30, 40}
    assert {r["module"] for r in rows} == {"q", "k", "v", "o", "gate", "up", "down"}
    # Oracle from the files: float64 SVD of each dW_t (bf16 rounding noise included).
    base = _load(pair.base)
    ends = _load(pair.checkpoints[40])
    for r in rows:
        name = r["name"]
        w0 = base[name].double().numpy()
        wt = _load(pair.checkpoints[r["step"]])[name].double().numpy()
        _, s, vt = np.linalg.svd(wt - w0)
        # Range finder with 2 power iterations, K + 10 vectors: s_1 to 1e-4 here.
        assert r["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-4), name
        _, _, vend = np.linalg.svd(ends[name].double().numpy() - w0)
        sim = float(np.square(vt[:2] @ vend[:2].T).sum()) / 2
        assert r["sim_k"] == pytest.approx(sim, abs=1e-3), (name, r["step"])
        assert r["sim_k"] > 0.95  # the same rank-2 directions at every step
    q = [r for r in rows if r["name"].endswith("layers.0.self_attn.q_proj.weight")]
    norms = [r["frobenius_delta"] for r in sorted(q, key=lambda r: r["step"])]
    assert norms == sorted(norms)
    assert norms[-1] == pytest.approx(4 * norms[0], rel=0.1)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [10, 20, 30, 40]
    assert summary["lock"]["lock_step"] == 10 and summary["lock"]["lock_fraction"] == 0.25


def test_synth_cli_writes_a_folder_diff_reads(tmp_path):
    assert main(["synth", str(tmp_path / "s"), "--hidden", "32", "--layers", "1",
                 "--intermediate", "48", "--vocab", "64", "--quiet"]) == 0  # fmt: skip
    assert main(["diff", str(tmp_path / "s" / "base"), str(tmp_path / "s" / "tuned"), "--out",
                 str(tmp_path / "o"), "--quiet", "--strict"]) == 0  # fmt: skip
    assert (tmp_path / "o" / "report.html").stat().st_size > 0


def test_trajectory_sketch_mode_within_its_stated_error(tmp_path):
    spec = SynthSpec(arch="llama", hidden=96, layers=1, intermediate=128, vocab=128,
                     update_rank=2, update_scale=2e-2, seed=3)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, steps=[10, 20])
    out = tmp_path / "out"
    ckpts = [str(p) for p in pair.checkpoints.values()]
    assert main(["trajectory", str(pair.base), *ckpts, "--out", str(out), "--k", "2",
                 "--sketch-rank", "16", "--quiet"]) == 0  # fmt: skip
    rows = read_table(out / "trajectory.parquet")
    base, end = _load(pair.base), _load(pair.checkpoints[20])
    for r in rows:
        w0 = base[r["name"]].double().numpy()
        wt = _load(pair.checkpoints[r["step"]])[r["name"]].double().numpy()
        _, s, vt = np.linalg.svd(wt - w0)
        _, _, ve = np.linalg.svd(end[r["name"]].double().numpy() - w0)
        sim = float(np.square(vt[:2] @ ve[:2].T).sum()) / 2
        # Rank-16 sketch of rank 2 + bf16 noise: the error is of the order of the tail.
        assert r["stable_rank"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=0.1)
        assert r["sim_k"] == pytest.approx(sim, abs=0.05)
    summary = json.loads((out / "summary.json").read_text())
    assert "sketch of rank 16" in summary["rules"]["spectrum"]


def test_randomized_subspaces_report_steps_residual_and_match_the_exact_path(tmp_path):
    """On the randomized path every matrix row says how many block Krylov blocks its
    subspaces took and the largest relative Ritz residual left (0 where the method handed
    over to the exact Gram path); on these gapless Gaussian weights the angles and ranks
    equal the exact path's, and no row is flagged unconverged. The exact path leaves both
    columns empty."""
    spec = SynthSpec(arch="llama", hidden=256, layers=1, intermediate=384, vocab=512, heads=4,
                     kv_heads=2, update_rank=3, update_scale=2e-2, seed=2)  # fmt: skip
    pair = write_pair(tmp_path / "pair", spec, tuned_prefix="")
    out = tmp_path / "randomized"
    assert main(["diff", str(pair.base), str(pair.tuned), "--out", str(out), "--rank", "8",
                 "--exact-threshold", "0", "--quiet"]) == 0  # fmt: skip
    rows = [r for r in read_table(out / "tensors.parquet") if r["rank_k"] is not None]
    assert rows and all(r["subspace_steps"] >= 2 for r in rows)
    assert all(0.0 <= r["subspace_residual"] <= 1e-6 for r in rows)
    notes = json.loads((out / "summary.json").read_text())["notes"]
    assert [n for n in notes if "before converging" in n] == []
    exact = tmp_path / "exact"
    assert main(["diff", str(pair.base), str(pair.tuned), "--out", str(exact), "--rank", "8",
                 "--quiet"]) == 0  # fmt: skip
    by_name = {r["name"]: r for r in read_table(exact / "tensors.parquet")}
    for r in rows:
        e = by_name[r["name"]]
        assert e["subspace_steps"] is None and e["subspace_residual"] is None
        assert r["stable_rank"] == pytest.approx(e["stable_rank"], rel=1e-9)
        for col in ("angle_left_max", "angle_right_max", "angle_left_mean", "angle_right_mean"):
            if e[col] is not None:
                assert r[col] == pytest.approx(e[col], abs=1e-3), (r["name"], col)


def test_unconverged_note_counts_rows_over_the_stop_test():
    rows = [
        {"name": "a", "subspace_steps": 30, "subspace_residual": 3e-4},
        {"name": "b", "subspace_steps": 6, "subspace_residual": 0.0},
        {"name": "c", "subspace_steps": 30, "subspace_residual": 2e-5},
        {"name": "d", "subspace_steps": None, "subspace_residual": None},
    ]
    (note,) = unconverged_note(rows)
    assert note.startswith("2 of 3 matrices") and "3.0e-04, in a" in note
    assert unconverged_note(rows[1:2] + rows[3:]) == []
