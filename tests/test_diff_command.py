"""``paramgeom diff`` end to end on files written here, against float64 numpy oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from paramgeom.cli import main
from paramgeom.report.tables import read_table

ETA = 1e-3


def _rand(g, *shape, scale=0.02):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _write_pair(tmp_path, tuned_prefix="model.", seed=0, base_dtype=torch.bfloat16):
    """A small Llama+MoE-shaped pair; the tuned side gets low-rank and dense updates, some
    tensors stay bitwise unchanged."""
    g = torch.Generator().manual_seed(seed)
    base = {
        "model.embed_tokens.weight": _rand(g, 40, 24),
        "model.layers.0.self_attn.q_proj.weight": _rand(g, 24, 24),
        "model.layers.0.self_attn.o_proj.weight": _rand(g, 24, 24),
        "model.layers.0.mlp.down_proj.weight": _rand(g, 24, 36),
        "model.layers.0.input_layernorm.weight": 1 + _rand(g, 24),
        "model.layers.1.mlp.experts.gate_proj": _rand(g, 3, 12, 24),
        "model.norm.weight": 1 + _rand(g, 24),
        "lm_head.weight": _rand(g, 40, 24),
    }
    for e in range(4):
        base[f"model.layers.1.mlp.experts.{e}.up_proj.weight"] = _rand(g, 12, 24)
    tuned = {}
    for i, (name, w) in enumerate(base.items()):
        if name == "model.layers.0.self_attn.o_proj.weight":
            d = torch.zeros_like(w)  # unchanged
        elif w.dim() >= 2:
            u = _rand(g, *w.shape[:-1], 2, scale=1.0)
            v = _rand(g, *w.shape[:-2], 2, w.shape[-1], scale=1.0)
            d = 2e-3 * (u @ v) + (1e-4 * _rand(g, *w.shape, scale=1.0) if i % 2 else 0)
        else:
            d = 1e-3 * _rand(g, *w.shape, scale=1.0)
        key = name if not name.startswith("model.") else tuned_prefix + name[len("model.") :]
        tuned[key] = (w + d).to(torch.bfloat16)
    base = {k: v.to(base_dtype) for k, v in base.items()}
    (tmp_path / "base").mkdir()
    (tmp_path / "tuned").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    save_file(tuned, str(tmp_path / "tuned" / "model.safetensors"))
    return base, tuned


def _oracle(base, tuned, k):
    """Per base name: float64 figures of the pair, both sides rounded to bf16."""
    out = {}
    for name, w0 in base.items():
        key = next(t for t in tuned if t.removeprefix("model.") == name.removeprefix("model."))
        a = w0.to(torch.bfloat16).double().numpy()
        b = tuned[key].double().numpy()
        mats = [(name, a, b)] if a.ndim < 3 else [(f"{name}[{e}]", a[e], b[e]) for e in range(3)]
        for nm, x, y in mats:
            d = y - x
            fig = {
                "numel": x.size,
                "unchanged": np.count_nonzero(np.abs(d) <= ETA * np.maximum(np.abs(x), np.abs(y))),
                "frob": np.linalg.norm(d),
            }
            if x.ndim == 2:
                s = np.linalg.svd(d, compute_uv=False)
                fig["stable_rank"] = (s**2).sum() / s[0] ** 2 if s[0] > 0 else 0.0
                p = s / s.sum() if s.sum() > 0 else s
                p = p[p > 0]
                fig["effective_rank"] = math.exp(-(p * np.log(p)).sum()) if p.size else 0.0
                kk = k(min(x.shape)) if callable(k) else min(k, *x.shape)
                u0, s0, v0 = np.linalg.svd(x)
                u1, s1, v1 = np.linalg.svd(y)
                fig["drift"] = np.linalg.norm(s1[:kk] - s0[:kk]) / np.linalg.norm(s0[:kk])
                for side, (p0, p1) in {"left": (u0, u1), "right": (v0.T, v1.T)}.items():
                    sv = np.linalg.svd(p1[:, :kk] - p0[:, :kk] @ (p0[:, :kk].T @ p1[:, :kk]),
                                       compute_uv=False)  # fmt: skip
                    fig[f"{side}_max"] = math.degrees(math.asin(min(1.0, sv.max())))
            out[nm] = fig
    return out


def _run(args):
    return main([str(a) for a in args])


@pytest.mark.parametrize("tuned_prefix", ["model.", ""])
def test_diff_matches_float64_oracle(tmp_path, tuned_prefix):
    base, tuned = _write_pair(tmp_path, tuned_prefix)
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--rank", 4,
                 "--quiet"]) == 0  # fmt: skip
    rows = {r["base_name"] + (r["name"][r["name"].rfind("[") :] if r["name"].endswith("]")
            else ""): r for r in read_table(out / "tensors.parquet")}  # fmt: skip
    oracle = _oracle(base, tuned, 4)
    assert set(rows) == set(oracle)
    for name, fig in oracle.items():
        row = rows[name]
        assert row["numel"] == fig["numel"]
        assert row["unchanged_fraction"] == fig["unchanged"] / fig["numel"], name
        assert row["frobenius_delta"] == pytest.approx(fig["frob"], rel=1e-12, abs=1e-300)
        if "stable_rank" in fig:
            assert row["stable_rank"] == pytest.approx(fig["stable_rank"], rel=1e-6), name
            assert row["effective_rank"] == pytest.approx(fig["effective_rank"], rel=1e-6), name
            if fig["frob"] == 0:
                assert row["angle_left_max"] == pytest.approx(0.0, abs=1e-5)
                continue
            assert row["spectral_drift"] == pytest.approx(fig["drift"], rel=1e-6), name
            assert row["angle_left_max"] == pytest.approx(fig["left_max"], rel=1e-4), name
            assert row["angle_right_max"] == pytest.approx(fig["right_max"], rel=1e-4), name
        else:
            assert row["stable_rank"] is None
    summary = json.loads((out / "summary.json").read_text())
    total = sum(f["numel"] for f in oracle.values())
    want = sum(f["unchanged"] for f in oracle.values()) / total
    assert summary["model"]["unchanged_fraction"] == pytest.approx(want, rel=1e-15)
    assert summary["model"]["numel"] == total
    assert summary["missing_in_base"] == [] and summary["missing_in_tuned"] == []
    assert rows["model.layers.1.mlp.experts.gate_proj[2]"]["stack"] == (
        f"{tuned_prefix}layers.1.mlp.experts.gate_proj"
    )
    report = (out / "report.md").read_text()
    assert "51.6%" in report and "77.2%" in report
    for f in ("tensors.csv", "report.html", "heatmap_unchanged.svg"):
        assert (out / f).stat().st_size > 0


def test_default_k_is_an_eighth_of_each_matrix_and_never_the_whole_space(tmp_path):
    """Without --rank, K = min(m, n) // 8 per matrix (at least 1), figures against the float64
    oracle at that K; a --rank not below a matrix's smaller side is capped there, and the side
    with only K dimensions gets empty angles (not a 0 by construction), said in one note,
    while the other side's angles and the drift are still the oracle's."""
    base, tuned = _write_pair(tmp_path)
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet"]) == 0
    oracle = _oracle(base, tuned, lambda p: max(1, p // 8))
    checked = 0
    for row in read_table(out / "tensors.parquet"):
        if row["stable_rank"] is None:
            continue
        p = min(int(d) for d in row["shape"].split("x"))
        assert row["rank_k"] == max(1, p // 8), row["name"]
        fig = oracle[row["name"]]
        if fig["frob"] > 0:
            assert row["angle_right_max"] == pytest.approx(fig["right_max"], rel=1e-4), row["name"]
            assert row["spectral_drift"] == pytest.approx(fig["drift"], rel=1e-6), row["name"]
            checked += 1
    assert checked >= 6
    rules = json.loads((out / "summary.json").read_text())["rules"]
    assert rules["rank_k"] == "min(m, n) // 8"
    assert "a side with only K dimensions gets no angles" in rules["angles"]

    wide = tmp_path / "wide"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", wide, "--rank", 12,
                 "--quiet"]) == 0  # fmt: skip
    oracle = _oracle(base, tuned, 12)
    rows = [r for r in read_table(wide / "tensors.parquet") if r["stable_rank"] is not None]
    narrow = []
    for r in rows:
        m, n = (int(d) for d in r["shape"].split("x"))
        assert r["rank_k"] == min(12, m, n)
        fig = oracle[r["name"]]
        # A side with exactly K dimensions: no angle; the other side and the drift are defined.
        for side, dim in (("left", m), ("right", n)):
            if dim <= 12:
                assert r[f"angle_{side}_max"] is None and r[f"angle_{side}_mean"] is None
            elif fig["frob"] > 0:
                assert r[f"angle_{side}_max"] == pytest.approx(fig[f"{side}_max"], rel=1e-4)
        if fig["frob"] > 0:
            assert r["spectral_drift"] == pytest.approx(fig["drift"], rel=1e-6), r["name"]
        narrow += [r] if min(m, n) <= 12 else []
    assert narrow and any(r["angle_right_max"] is not None for r in narrow)
    notes = json.loads((wide / "summary.json").read_text())["notes"]
    whole = [n for n in notes if "whole space" in n]
    assert len(whole) == 1 and whole[0].startswith(f"{len(narrow)} matrices")


def test_small_tensors_grouped_give_the_per_tensor_figures(tmp_path, monkeypatch):
    """With small pairs grouped into units (what checkpoints of thousands of tensors get:
    one journal entry and one batched SVD per group), every row equals the one-unit-per-
    tensor run's: counts exactly, ranks and drift to 1e-9, angles to 1e-4 degree (the two
    paths differ: Gram eigenvectors vs a batched float64 SVD)."""
    from paramgeom.engine import plan

    _write_pair(tmp_path)
    args = ["diff", tmp_path / "base", tmp_path / "tuned", "--rank", 4, "--quiet", "--out"]
    assert _run([*args, tmp_path / "single"]) == 0
    monkeypatch.setattr(plan, "SMALL_GROUPING_MIN_PAIRS", 0)
    assert _run([*args, tmp_path / "grouped"]) == 0
    journal = (tmp_path / "grouped" / "journal" / "diff.rank0.jsonl").read_text().splitlines()
    assert any(".." in json.loads(line)["unit"] for line in journal)  # groups were formed
    single = {r["name"]: r for r in read_table(tmp_path / "single" / "tensors.parquet")}
    grouped = {r["name"]: r for r in read_table(tmp_path / "grouped" / "tensors.parquet")}
    assert single.keys() == grouped.keys()
    for name, a in single.items():
        b = grouped[name]
        for col, value in a.items():
            if isinstance(value, float) and col.startswith("angle"):
                assert b[col] == pytest.approx(value, abs=1e-4), (name, col)
            elif isinstance(value, float):
                assert b[col] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, col)
            elif col not in ("subspace_steps", "subspace_residual"):
                assert b[col] == value, (name, col)


def test_fp32_base_against_bf16_tuned_uses_the_bf16_rule(tmp_path):
    base, tuned = _write_pair(tmp_path, base_dtype=torch.float32)
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet",
                 "--no-angles"]) == 0  # fmt: skip
    rows = {r["name"]: r for r in read_table(out / "tensors.parquet")}
    oracle = _oracle(base, tuned, 4)
    row = rows["model.layers.0.mlp.down_proj.weight"]
    fig = oracle["model.layers.0.mlp.down_proj.weight"]
    assert row["dtype_base"] == "float32" and row["dtype_tuned"] == "bfloat16"
    assert row["unchanged_fraction"] == fig["unchanged"] / fig["numel"]
    assert row["angle_left_max"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert "bf16" in summary["rules"]["dtype"]


def test_tables_identical_across_runs_and_chunking(tmp_path):
    _write_pair(tmp_path)
    outs = []
    for i, extra in enumerate([[], [], ["--chunk-bytes", "1KB"]]):
        out = tmp_path / f"out{i}"
        assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet",
                     "--rank", 4, *extra]) == 0  # fmt: skip
        outs.append(out)
    assert (outs[0] / "tensors.csv").read_bytes() == (outs[1] / "tensors.csv").read_bytes()
    assert (outs[0] / "tensors.parquet").read_bytes() == (outs[1] / "tensors.parquet").read_bytes()
    whole = {r["name"]: r for r in read_table(outs[0] / "tensors.parquet")}
    blocks = {r["name"]: r for r in read_table(outs[2] / "tensors.parquet")}
    assert set(whole) == set(blocks)
    for name, a in whole.items():
        b = blocks[name]
        for col in ("numel", "unchanged_fraction", "unchanged_fraction_atol", "n_nonfinite"):
            assert a[col] == b[col], (name, col)
        assert b["frobenius_delta"] == pytest.approx(a["frobenius_delta"], rel=1e-12)
        if a["stable_rank"] is not None and b["stable_rank"] is not None:
            assert b["stable_rank"] == pytest.approx(a["stable_rank"], rel=1e-6)
            if a["frobenius_delta"] > 0:
                assert b["angle_right_max"] == pytest.approx(a["angle_right_max"], rel=1e-4)


def test_missing_tensors_listed_and_strict_fails(tmp_path, capsys):
    base, tuned = _write_pair(tmp_path)
    extra = dict(tuned)
    extra["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2, dtype=torch.bfloat16)
    del extra["model.norm.weight"]
    save_file(extra, str(tmp_path / "tuned" / "model.safetensors"))
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_in_tuned"] == ["model.norm.weight"]
    assert summary["missing_in_base"] == ["model.layers.9.mlp.up_proj.weight"]
    capsys.readouterr()
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--strict",
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strict" in err and "tuned" in err


def test_tied_embeddings_reported_once(tmp_path):
    base, tuned = _write_pair(tmp_path)
    for side in ("base", "tuned"):
        (tmp_path / side / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet"]) == 0
    names = [r["name"] for r in read_table(out / "tensors.parquet")]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert json.loads((out / "summary.json").read_text())["tied"]


def test_nonfinite_values_are_counted_not_fatal(tmp_path):
    base, tuned = _write_pair(tmp_path)
    t = dict(tuned)
    w = t["model.layers.0.mlp.down_proj.weight"].clone()
    w[0, 0], w[1, 1], w[2, 2] = float("nan"), float("inf"), float("-inf")
    t["model.layers.0.mlp.down_proj.weight"] = w
    save_file(t, str(tmp_path / "tuned" / "model.safetensors"))
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet"]) == 0
    row = next(
        r for r in read_table(out / "tensors.parquet") if r["name"].endswith("down_proj.weight")
    )
    assert row["n_nonfinite"] == 3 and row["stable_rank"] is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["n_nonfinite"] == 3
    assert any("NaN/Inf" in n for n in summary["notes"])


def test_empty_and_zero_d_tensors(tmp_path):
    for side in ("base", "tuned"):
        (tmp_path / side).mkdir()
        save_file(
            {"model.scalar": torch.tensor(1.5, dtype=torch.bfloat16),
             "model.empty": torch.zeros(0, 4, dtype=torch.bfloat16),
             "model.layers.0.mlp.up_proj.weight": torch.ones(3, 2, dtype=torch.bfloat16)},
            str(tmp_path / side / "model.safetensors"),
        )  # fmt: skip
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet"]) == 0
    rows = {r["name"]: r for r in read_table(out / "tensors.parquet")}
    assert rows["model.scalar"]["numel"] == 1 and rows["model.scalar"]["unchanged_fraction"] == 1.0
    assert rows["model.empty"]["numel"] == 0 and rows["model.empty"]["unchanged_fraction"] is None
    assert json.loads((out / "summary.json").read_text())["model"]["unchanged_fraction"] == 1.0


def test_masks_columns_equal_the_metric_on_the_same_weights(tmp_path):
    from paramgeom import metrics

    base, tuned = _write_pair(tmp_path)
    out = tmp_path / "out"
    assert _run(["diff", tmp_path / "base", tmp_path / "tuned", "--out", out, "--quiet",
                 "--masks", "--no-angles"]) == 0  # fmt: skip
    rows = {r["name"]: r for r in read_table(out / "tensors.parquet")}
    name = "model.layers.0.mlp.down_proj.weight"
    w0, w1 = base[name].to(torch.bfloat16), tuned[name]
    changed = ~(w0.double() - w1.double()).abs().le(
        ETA * torch.maximum(w0.double().abs(), w1.double().abs())
    )
    want = metrics.principal_mask_overlap(w0, changed)
    assert rows[name]["changed_in_principal"] == want.frac_changed_in_principal
    assert rows[name]["changed_in_low_magnitude"] == want.frac_changed_in_low
    assert 0 < rows[name]["changed_in_low_magnitude"] < 1
    unchanged = rows["model.layers.0.self_attn.o_proj.weight"]
    assert unchanged["changed_in_principal"] is None  # nothing changed: no fraction
    assert "masks" in json.loads((out / "summary.json").read_text())["rules"]
