"""Report layer: tables, aggregation, lock rule, plots, Markdown/HTML (DESIGN "Outputs")."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from paramgeom.engine.schema import DIFF_COLUMNS, TRAJECTORY_COLUMNS
from paramgeom.report import (
    lock_step,
    plot_diff,
    plot_trajectory,
    read_csv,
    read_table,
    summarize_diff,
    summarize_trajectory,
    write_diff_report,
    write_json,
    write_table,
    write_trajectory_report,
)
from paramgeom.report import tables as tables_mod

pa = pytest.importorskip("pyarrow")

HOSTILE = 'model.layers.1.mlp.experts.<script>alert("x")</script>&|*_[0].weight'
STACK = "model.layers.1.mlp.experts.down_proj.weight"


def _matrix(name, module, layer, m, n, uf, rc, sr, angle, **extra):
    fb = 10.0 + layer if layer is not None else 50.0
    row = {
        "name": name,
        "base_name": "model." + name,
        "module": module,
        "layer": layer,
        "expert": None,
        "stack": None,
        "shape": f"{m}x{n}",
        "numel": m * n,
        "dtype_base": "float32",
        "dtype_tuned": "bfloat16",
        "unchanged_fraction": uf,
        "unchanged_fraction_atol": min(1.0, uf + 0.1),
        "equal_fraction": uf * 0.5,
        "n_nonfinite": 0,
        "frobenius_delta": rc * fb,
        "frobenius_base": fb,
        "relative_change": rc,
        "max_abs_delta": rc / 10,
        "stable_rank": sr,
        "effective_rank": 2 * sr,
        "spectral_drift": rc / 100,
        "rank_k": 8,
        "angle_left_max": angle,
        "angle_left_mean": angle / 2,
        "angle_right_max": angle * 1.5,
        "angle_right_mean": angle / 3,
        "spectrum": "exact",
    }
    row.update(extra)
    return row


def _vector(name, module, layer, n, uf, rc, **extra):
    row = {
        "name": name,
        "base_name": name,
        "module": module,
        "layer": layer,
        "shape": str(n),
        "numel": n,
        "dtype_base": "bfloat16",
        "dtype_tuned": "bfloat16",
        "unchanged_fraction": uf,
        "unchanged_fraction_atol": uf,
        "equal_fraction": uf,
        "n_nonfinite": 0,
        "frobenius_delta": rc * 2.0,
        "frobenius_base": 2.0,
        "relative_change": rc,
        "max_abs_delta": rc,
    }  # spectral columns absent: they become None
    row.update(extra)
    return row


def diff_rows() -> list[dict]:
    rows = [
        _matrix("model.layers.0.self_attn.q_proj.weight", "q", 0, 64, 32, 0.5, 1e-3, 3.0, 1.0),
        _matrix("model.layers.0.self_attn.k_proj.weight", "k", 0, 16, 32, 0.7, 2e-3, 5.0, 2.0),
        _matrix("model.layers.1.self_attn.q_proj.weight", "q", 1, 64, 32, 0.4, 3e-3, 4.0, 0.5),
        _matrix(
            "model.layers.1.self_attn.k_proj.weight",
            "k",
            1,
            16,
            32,
            0.9,
            4e-4,
            math.nan,  # a numerical failure: NaN spectra are left out of figures
            math.nan,
            spectral_drift=math.nan,
            n_nonfinite=3,
        ),
        _vector("model.layers.0.input_layernorm.weight", "norm", 0, 32, 0.95, 1e-4),
        _vector("model.layers.1.input_layernorm.weight", "norm", 1, 32, 1.0, 0.0),
        _vector("model.layers.1.self_attn.q_proj.bias", "bias", 1, 0, math.nan, 0.0),  # empty
        _matrix("model.embed_tokens.weight", "embed", None, 100, 32, 0.2, 5e-3, 20.0, 3.0),
        _matrix("lm_head.weight", "lm_head", None, 100, 32, 0.3, 6e-3, 30.0, 4.0),
        _vector("model.norm.weight", "norm", None, 32, None, 0.0),  # unknown fraction
    ]
    for e in range(4):
        rows.append(
            _matrix(
                f"{STACK}[{e}]",
                "down",
                1,
                32,
                16,
                0.6 + 0.05 * e,
                1e-3 * (e + 1),
                2.0 + e,
                0.25 * (e + 1),
                expert=e,
                stack=STACK,
            )
        )
    return rows


def _weighted_np(rows, col):
    w = np.array([r["numel"] for r in rows if _ok(r.get(col))], dtype=float)
    v = np.array([r[col] for r in rows if _ok(r.get(col))], dtype=float)
    return float((w * v).sum() / w.sum())


def _ok(v):
    return v is not None and math.isfinite(v)


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def test_summarize_diff_model_values():
    rows = diff_rows()
    s = summarize_diff(rows)
    m = s["model"]
    assert m["n_tensors"] == len(rows)
    assert m["numel"] == sum(r["numel"] for r in rows)
    # hand check of the weighting on a few numbers
    num = 2048 * 0.5 + 512 * 0.7 + 2048 * 0.4 + 512 * 0.9 + 32 * 0.95 + 32 * 1.0
    num += 3200 * 0.2 + 3200 * 0.3 + sum(512 * (0.6 + 0.05 * e) for e in range(4))
    den = 2048 + 512 + 2048 + 512 + 32 + 32 + 3200 + 3200 + 4 * 512
    assert m["unchanged_fraction"] == pytest.approx(num / den, rel=1e-14)
    assert m["unchanged_fraction"] == pytest.approx(_weighted_np(rows, "unchanged_fraction"))
    for col in ("unchanged_fraction_atol", "equal_fraction", "angle_left_mean"):
        assert m[col] == pytest.approx(_weighted_np(rows, col), rel=1e-13)
    fd = np.array([r["frobenius_delta"] for r in rows])
    fb = np.array([r["frobenius_base"] for r in rows])
    assert m["relative_change"] == pytest.approx(
        math.sqrt((fd**2).sum()) / math.sqrt((fb**2).sum()), rel=1e-13
    )
    assert m["frobenius_delta"] == pytest.approx(math.sqrt((fd**2).sum()), rel=1e-13)
    assert m["n_nonfinite"] == 3
    assert m["n_matrices"] == 10  # 9 with finite spectra + the NaN one (stable_rank not None)
    sr = [r["stable_rank"] for r in rows if _ok(r.get("stable_rank"))]
    assert m["stable_rank_median"] == pytest.approx(float(np.median(sr)))
    assert m["stable_rank_mean"] == pytest.approx(float(np.mean(sr)))
    alm = [r["angle_left_max"] for r in rows if _ok(r.get("angle_left_max"))]
    assert m["angle_left_max_mean"] == pytest.approx(float(np.mean(alm)))
    assert m["angle_left_max_max"] == 4.0
    assert m["angle_right_max_max"] == 6.0
    drift = [r["spectral_drift"] for r in rows if _ok(r.get("spectral_drift"))]
    assert m["spectral_drift_mean"] == pytest.approx(float(np.mean(drift)))


def test_summarize_diff_groups():
    rows = diff_rows()
    s = summarize_diff(rows)
    assert list(s["by_module"]) == ["q", "k", "down", "embed", "lm_head", "norm", "bias"]
    q = s["by_module"]["q"]
    assert q["n_tensors"] == 2 and q["numel"] == 4096
    assert q["unchanged_fraction"] == pytest.approx((0.5 + 0.4) / 2)
    assert q["relative_change"] == pytest.approx(
        math.hypot(1e-3 * 10, 3e-3 * 11) / math.hypot(10, 11)
    )
    assert q["stable_rank_mean"] == pytest.approx(3.5)
    assert q["angle_left_max_mean"] == pytest.approx(0.75)
    assert q["angle_right_max_mean"] == pytest.approx(1.125)
    k = s["by_module"]["k"]
    assert k["stable_rank_mean"] == 5.0  # the NaN matrix is left out
    assert k["unchanged_fraction"] == pytest.approx(0.8)
    assert s["by_module"]["bias"]["unchanged_fraction"] is None  # only an empty tensor
    assert s["by_module"]["norm"]["unchanged_fraction"] == pytest.approx(0.975)
    assert s["by_module"]["norm"]["stable_rank_mean"] is None

    assert list(s["by_layer"]) == ["0", "1", "none"]
    layer0 = [r for r in rows if r["layer"] == 0]
    assert s["by_layer"]["0"]["unchanged_fraction"] == pytest.approx(
        _weighted_np(layer0, "unchanged_fraction")
    )
    none = s["by_layer"]["none"]
    assert none["n_tensors"] == 3
    assert none["unchanged_fraction"] == pytest.approx(0.25)  # embed, lm_head equal size

    assert list(s["by_stack"]) == [STACK]
    st = s["by_stack"][STACK]
    assert st["n_experts"] == 4 and st["numel"] == 4 * 512 and st["n_tensors"] == 4
    assert st["unchanged_fraction"] == pytest.approx(0.675)
    assert st["angle_left_max_max"] == 1.0


# --------------------------------------------------------------------------------------------
# trajectory and lock rule
# --------------------------------------------------------------------------------------------


def _curve(sims, sranks, start=10, step=10):
    return [
        {"step": start + i * step, "sim_k_mean": s, "stable_rank_mean": r}
        for i, (s, r) in enumerate(zip(sims, sranks, strict=True))
    ]


def test_lock_step_curves():
    got = lock_step(_curve([0.2, 0.5, 0.92, 0.95, 0.97, 1.0], [30, 20, 12, 10, 9, 9]), k=16)
    assert got["lock_step"] == 30 and got["lock_fraction"] == pytest.approx(0.5)
    assert got["final_step"] == 60 and "Sim_K" in got["rule"]
    # dips below the threshold after first crossing: the lock starts after the dip
    got = lock_step(_curve([0.3, 0.95, 0.85, 0.93, 0.96, 1.0], [5] * 6), k=16)
    assert got["lock_step"] == 40 and got["lock_fraction"] == pytest.approx(40 / 60)
    # stable rank rises above K late: never locked
    got = lock_step(_curve([0.95] * 5 + [1.0], [5, 5, 5, 5, 17, 17]), k=16)
    assert got["lock_step"] is None and got["lock_fraction"] is None
    # never close to the final subspace
    assert lock_step(_curve([0.1, 0.2, 0.3, 1.0], [4] * 4))["lock_step"] is None
    # only the final step (Sim_K(t_end, t_end) = 1 trivially) is not a lock
    assert lock_step(_curve([0.1, 0.2, 0.3, 1.0], [4] * 4), lock_threshold=0.9)["lock_step"] is None
    # a missing value fails the rule; threshold is inclusive, K strict
    assert lock_step(_curve([0.9, None, 0.9, 1.0], [1, 1, 1, 1]))["lock_step"] == 30
    assert lock_step(_curve([0.9, 0.9, 1.0], [16, 15, 15]), k=16)["lock_step"] == 20
    assert lock_step([])["lock_step"] is None


def traj_rows() -> list[dict]:
    steps = [100, 200, 300, 400, 500]
    q_sim = [0.4, 0.95, 0.96, 0.98, 1.0]
    v_sim = [0.2, 0.5, 0.7, 0.95, 1.0]
    rows = []
    for i, t in enumerate(steps):
        for layer in (0, 1):
            rows.append(
                {
                    "name": f"model.layers.{layer}.self_attn.q_proj.weight",
                    "module": "q",
                    "layer": layer,
                    "step": t,
                    "checkpoint": f"checkpoint-{t}",
                    "frobenius_delta": 0.1 * (i + 1) * (layer + 1),
                    "relative_change": 0.01 * (i + 1),
                    "stable_rank": 20.0 - 4 * i,  # 20, 16, 12, 8, 4
                    "hill_alpha": 2.0 + 0.1 * i,
                    "sim_k": q_sim[i],
                    "unchanged_fraction": 0.9 - 0.1 * i,
                }
            )
            rows.append(
                {
                    "name": f"model.layers.{layer}.self_attn.v_proj.weight",
                    "module": "v",
                    "layer": layer,
                    "step": t,
                    "checkpoint": f"checkpoint-{t}",
                    "frobenius_delta": 0.2 * (i + 1),
                    "relative_change": 0.02 * (i + 1),
                    "stable_rank": 30.0,  # v never goes below K
                    "hill_alpha": 3.0,
                    "sim_k": v_sim[i],
                    "unchanged_fraction": 0.8 - 0.1 * i,
                }
            )
    return rows


def test_summarize_trajectory():
    rows = traj_rows()
    random.Random(1).shuffle(rows)
    s = summarize_trajectory(rows, k=16, lock_threshold=0.9)
    steps = s["steps"]
    assert [x["step"] for x in steps] == [100, 200, 300, 400, 500]
    st = steps[1]  # step 200, i = 1
    assert st["n_matrices"] == 4
    assert st["stable_rank_mean"] == pytest.approx((16 + 16 + 30 + 30) / 4)
    assert st["sim_k_mean"] == pytest.approx((0.95 + 0.5) / 2)
    assert st["hill_alpha_mean"] == pytest.approx((2.1 * 2 + 3.0 * 2) / 4)
    assert st["frobenius_delta"] == pytest.approx(math.sqrt(0.2**2 + 0.4**2 + 2 * 0.4**2))
    assert st["unchanged_fraction"] == pytest.approx((0.8 * 2 + 0.7 * 2) / 4)
    assert s["unchanged_fraction_weighting"] == "mean over matrices"
    # q: Sim_K >= 0.9 from step 200, srank < 16 from step 300 -> locked at 300 (60%)
    assert s["lock_by_module"]["q"]["lock_step"] == 300
    assert s["lock_by_module"]["q"]["lock_fraction"] == pytest.approx(0.6)
    assert s["lock_by_module"]["v"]["lock_step"] is None
    # model-wide means: srank (q+v)/2 = 25, 23, 21, 19, 17 >= 16 -> never locked
    assert s["lock"]["lock_step"] is None
    assert list(s["steps_by_module"]) == ["q", "v"]
    assert s["steps_by_module"]["q"][2]["stable_rank_mean"] == pytest.approx(12.0)
    # with a larger K the model locks once the mean Sim_K stays >= 0.9 (from step 400)
    s2 = summarize_trajectory(rows, k=32, lock_threshold=0.9)
    assert s2["lock"]["lock_step"] == 400 and s2["lock"]["lock_fraction"] == pytest.approx(0.8)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _canon(rows):
    """Rows compared exactly: floats by repr (NaN == NaN, -0.0 != 0.0), then the value."""
    return [
        {k: (repr(v) if isinstance(v, float) else v, type(v).__name__) for k, v in r.items()}
        for r in rows
    ]


def tricky_rows() -> list[dict]:
    rows = diff_rows()
    rows[0]["relative_change"] = 0.1 + 0.2
    rows[1]["max_abs_delta"] = 5e-324
    rows[2]["frobenius_base"] = 1.7976931348623157e308
    rows[3]["max_abs_delta"] = math.inf
    rows[4]["spectral_drift"] = -0.0
    rows[5]["shape"] = ""  # 0-d: empty string, not None
    rows[6]["dtype_base"] = 'weird, "quoted"\nname\r\u00e9'
    rows[7]["layer"] = -(2**63)
    rows[8]["numel"] = np.int64(3200)  # numpy scalars are accepted
    rows[8]["stable_rank"] = np.float32(0.1)
    rows[9]["name"] = HOSTILE
    return rows


def _expected(rows):
    full = [{c: r.get(c) for c in DIFF_COLUMNS} for r in rows]
    for r in full:
        for c, (kind, _) in DIFF_COLUMNS.items():
            if r[c] is not None:
                r[c] = {"string": str, "int64": int, "float64": float}[kind](r[c])
    return sorted(full, key=lambda r: r["name"])


def test_table_round_trip_exact(tmp_path):
    rows = tricky_rows()
    paths = write_table(rows, DIFF_COLUMNS, tmp_path, "diff")
    assert [p.name for p in paths] == ["diff.parquet", "diff.csv"]
    want = _canon(_expected(rows))
    from_parquet = read_table(paths[0])
    from_csv = read_csv(paths[1], DIFF_COLUMNS)
    assert list(from_parquet[0]) == list(DIFF_COLUMNS)
    assert _canon(from_parquet) == want
    assert _canon(from_csv) == want
    # Parquet schema carries the types and descriptions
    import pyarrow.parquet as pq

    schema = pq.read_schema(paths[0])
    assert str(schema.field("numel").type) == "int64"
    assert schema.field("numel").metadata[b"description"] == DIFF_COLUMNS["numel"][1].encode()
    text = paths[1].read_text(encoding="utf-8")
    assert "0.30000000000000004" in text and ",nan," in text and ",inf," in text
    assert ',"",' in text  # empty string is quoted, None is an empty cell


def test_table_bytes_independent_of_row_order(tmp_path):
    rows = tricky_rows()
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)
    a = write_table(rows, DIFF_COLUMNS, tmp_path / "a", "diff")
    b = write_table(shuffled, DIFF_COLUMNS, tmp_path / "b", "diff")
    for pa_, pb_ in zip(a, b, strict=True):
        assert pa_.read_bytes() == pb_.read_bytes()
    # trajectory: sorted by name, then step
    traj = traj_rows()
    random.Random(3).shuffle(traj)
    t1 = write_table(traj, TRAJECTORY_COLUMNS, tmp_path / "t1", "trajectory")
    t2 = write_table(sorted(traj, key=repr), TRAJECTORY_COLUMNS, tmp_path / "t2", "trajectory")
    assert t1[0].read_bytes() == t2[0].read_bytes() and t1[1].read_bytes() == t2[1].read_bytes()
    back = read_table(t1[0])
    assert [(r["name"], r["step"]) for r in back] == sorted((r["name"], r["step"]) for r in traj)


def test_table_rejects_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="not in the table schema"):
        write_table([{"name": "a", "bogus": 1}], DIFF_COLUMNS, tmp_path, "t")
    with pytest.raises(ValueError, match="numel"):
        write_table([{"name": "a", "numel": 1.5}], DIFF_COLUMNS, tmp_path, "t")
    with pytest.raises(ValueError, match="layer"):
        write_table([{"name": "a", "layer": True}], DIFF_COLUMNS, tmp_path, "t")
    with pytest.raises(ValueError, match="name"):
        write_table([{"name": 3}], DIFF_COLUMNS, tmp_path, "t")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_no_temp_files_and_no_half_table(tmp_path, monkeypatch):
    rows = diff_rows()
    paths = write_table(rows, DIFF_COLUMNS, tmp_path, "diff")
    write_table(rows[:3], DIFF_COLUMNS, tmp_path, "diff")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff.csv", "diff.parquet"]
    good = [p.read_bytes() for p in paths]

    # a crash half way through the CSV leaves the previous table and no temp file
    calls = {"n": 0}

    def flaky(fmt):
        def cell(value):
            calls["n"] += 1
            if calls["n"] > 40:
                raise RuntimeError("killed")
            return fmt(value)

        return cell

    monkeypatch.setattr(tables_mod, "_FORMAT", {k: flaky(f) for k, f in tables_mod._FORMAT.items()})
    with pytest.raises(RuntimeError, match="killed"):
        write_table(rows, DIFF_COLUMNS, tmp_path, "diff")
    monkeypatch.undo()

    # ... and so does a crash inside the Parquet writer after it wrote some bytes
    import pyarrow.parquet as pq

    def boom(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_table(rows, DIFF_COLUMNS, tmp_path, "diff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff.csv", "diff.parquet"]
    assert [p.read_bytes() for p in paths] == good
    assert len(read_table(paths[0])) == 3


def test_write_json(tmp_path):
    path = write_json(
        {"b": math.nan, "a": [1.5, math.inf, np.float64(2.0)], "c": {2: -math.inf, "x": None}},
        tmp_path / "summary.json",
    )
    text = path.read_text()
    assert text == (
        '{\n  "a": [\n    1.5,\n    null,\n    2.0\n  ],\n  "b": null,\n'
        '  "c": {\n    "2": null,\n    "x": null\n  }\n}\n'
    )
    summary = summarize_diff(diff_rows())
    write_json(summary, tmp_path / "s.json")
    assert (
        json.loads((tmp_path / "s.json").read_text())["model"]["numel"] == summary["model"]["numel"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "summary.json"]


# --------------------------------------------------------------------------------------------
# plots and reports
# --------------------------------------------------------------------------------------------


def _svgs(paths):
    """Each file is an SVG document that parses (values: tests/test_report_svg.py)."""
    import xml.etree.ElementTree as ET

    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
        assert ET.parse(p).getroot().tag == "{http://www.w3.org/2000/svg}svg"


@pytest.fixture(scope="module")
def diff_plots(tmp_path_factory):
    out = tmp_path_factory.mktemp("diff")
    return out, plot_diff(diff_rows(), out)


def test_plot_diff(diff_plots, tmp_path):
    out, paths = diff_plots
    assert [p.name for p in paths] == [
        "heatmap_unchanged.svg",
        "heatmap_angle.svg",
        "stable_rank_hist.svg",
        "angle_hist.svg",
        "unchanged_vs_update.svg",
    ]
    _svgs(paths)
    assert all(p.parent == out for p in paths)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # only 1-D tensors outside the layers: no heat maps, no spectra; no crash
    only_norms = [_vector("model.norm.weight", "norm", None, 8, 0.5, 1e-3)]
    got = plot_diff(only_norms, tmp_path)
    assert [p.name for p in got] == ["unchanged_vs_update.svg"]
    assert plot_diff([], tmp_path / "empty") == []


def test_plot_trajectory(tmp_path):
    rows = traj_rows()
    summary = summarize_trajectory(rows, k=16)
    paths = plot_trajectory(rows, summary, tmp_path)
    assert [p.name for p in paths] == [
        "sim_k.svg",
        "stable_rank.svg",
        "update_norm.svg",
        "hill_alpha.svg",
    ]
    _svgs(paths)
    assert plot_trajectory([], {}, tmp_path / "empty") == []


def diff_summary(out):
    s = summarize_diff(diff_rows())
    s["by_stack"][HOSTILE] = dict(s["by_stack"][STACK], n_experts=2)
    s.update(
        rules={"eta": 1e-3, "atol": 1e-5, "dtype rule": "fp32 base cast to bf16", "rank_k": 8},
        inputs={
            "base": {"path": "/ckpt/base", "files": ["model.safetensors"]},
            "tuned": {"path": "/ckpt/<tuned>", "files": ["a.safetensors", "b.safetensors"]},
        },
        missing_in_tuned=[HOSTILE],
        missing_in_base=["extra.weight"],
        tied=["lm_head.weight"],
        notes=["a note & <b>bold</b>"],
    )
    return s


def test_diff_report(diff_plots):
    out, plots = diff_plots
    summary = diff_summary(out)
    paths = write_diff_report(summary, out, plots)
    assert [p.name for p in paths] == ["report.md", "report.html"]
    md = paths[0].read_text(encoding="utf-8")
    page = paths[1].read_text(encoding="utf-8")
    ours = f"{100 * summary['model']['unchanged_fraction']:.2f}%"
    angle = f"{summary['model']['angle_left_max_mean']:.3g}°"
    drift = f"{summary['model']['spectral_drift_mean']:.2e}"
    q_uf = f"{100 * summary['by_module']['q']['unchanged_fraction']:.2f}%"
    for text in (md, page):
        for fig in ("51.6%", "8.1%", "77.2%", "~1e-3", "~1e-4", "~1e-5", "Qwen3-8B"):
            assert fig in text
        assert ours in text and angle in text and drift in text and q_uf in text
        assert "heatmap_unchanged.svg" in text and "unchanged_vs_update.svg" in text
        assert "matched relative update" in text
        assert "<script>" not in text and "<b>bold</b>" not in text
        assert "fp32 base cast to bf16" in text and "extra.weight" in text
    assert "~1°" in page and "&gt; 10°" in page and "&lt; 0.5°" in page
    assert "\\~1°" in md and "\\> 10°" in md and "\\< 0.5°" in md
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;|*_[0]" in page
    assert "\\<script\\>alert" in md and "\\&\\|\\*\\_\\[0\\]" in md
    assert '<img src="heatmap_unchanged.svg" alt="Unchanged fraction (bf16 rule)' in page
    assert "](heatmap_unchanged.svg)" in md
    assert "/ckpt/&lt;tuned&gt;" in page
    # every table row of the Markdown has the same number of cells as its header
    for line in md.splitlines():
        if line.startswith("| "):
            assert line.replace("\\|", "").count("|") >= 3


def test_reports_tolerate_missing_keys(tmp_path):
    paths = write_diff_report({}, tmp_path / "d", [])
    assert "51.6%" in paths[0].read_text() and "n/a" in paths[0].read_text()
    paths = write_trajectory_report({}, tmp_path / "t", [])
    assert "not locked" in paths[1].read_text()


def test_trajectory_report(tmp_path):
    rows = traj_rows()
    s = summarize_trajectory(rows, k=32)
    s.update(rules={"sketch_rank": 64}, inputs={"base": {"path": "/b"}, "checkpoints": ["/c1"]})
    s["notes"] = ["q & v only"]
    plots = [tmp_path / "sim_k.svg"]
    paths = write_trajectory_report(s, tmp_path, plots)
    md, page = (p.read_text(encoding="utf-8") for p in paths)
    for text in (md, page):
        assert "step 400 (80.0% of training)" in text
        assert "~10%" in text and "16" in text
        assert "sim_k.svg" in text
    assert "sketch_rank: 64" in page and "sketch\\_rank: 64" in md
    assert "q &amp; v only" in page
