"""Which matrices take the exact Gram path (``DiffOptions.exact_spectrum``): always up to
``EXACT_ALWAYS``, then where the block Krylov basis would pass half the space within
``KRYLOV_MIN_BLOCKS`` blocks (the default K = min(m, n) / 8 does), up to ``EXACT_MAX``;
``--exact-threshold`` replaces the rule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from paramgeom.cli import main
from paramgeom.engine import compute
from paramgeom.engine.compute import DiffOptions
from paramgeom.report.tables import read_table


def test_default_rule():
    o = DiffOptions()
    assert o.exact_threshold is None
    assert o.exact_spectrum(1, 1) and o.exact_spectrum(compute.EXACT_ALWAYS, 1)
    # above EXACT_ALWAYS: exact at the default K (an eighth), Krylov for a small K
    for p in (4097, 6144, 12288, compute.EXACT_MAX):
        assert o.exact_spectrum(p, o.subspace_k(p)), p
        assert not o.exact_spectrum(p, 64), p
    # the boundary: 4 blocks of K + 10 against half the side
    p = 8192
    k_min = p // 8 - 10
    assert o.exact_spectrum(p, k_min) and not o.exact_spectrum(p, k_min - 1)
    assert not o.exact_spectrum(compute.EXACT_MAX + 1, compute.EXACT_MAX)


def test_a_given_threshold_replaces_the_rule():
    for t in (0, 100, 20000):
        o = DiffOptions(exact_threshold=t)
        assert o.exact_spectrum(t, 1) and not o.exact_spectrum(t + 1, t + 1)
    assert DiffOptions(exact_threshold=0).fingerprint() != DiffOptions().fingerprint()
    with pytest.raises(ValueError, match="exact_threshold"):
        DiffOptions(exact_threshold=-1)


def _pair(tmp_path, m: int, n: int) -> None:
    g = torch.Generator().manual_seed(m * n)
    w0 = torch.randn(m, n, generator=g) * 0.02
    w1 = w0 + 1e-3 * torch.randn(m, n, generator=g)
    for side, w in (("base", w0), ("tuned", w1)):
        (tmp_path / side).mkdir()
        name = "model.layers.0.self_attn.q_proj.weight"
        save_file({name: w.bfloat16()}, tmp_path / side / "model.safetensors")


def _row(tmp_path, out: str, *extra) -> tuple[dict, dict]:
    args = ["diff", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(tmp_path / out)]
    assert main([*args, "--quiet", *map(str, extra)]) == 0
    (row,) = list(read_table(tmp_path / out / "tensors.parquet"))
    rules = json.loads((tmp_path / out / "summary.json").read_text())["rules"]
    return row, rules


def test_the_rule_picks_the_path_in_a_diff(tmp_path, monkeypatch):
    """A 200 x 200 matrix with EXACT_ALWAYS lowered to 16: the default K (25) takes the
    exact path (no Krylov steps, effective rank over the whole spectrum), ``--rank 2`` and
    ``--exact-threshold 0`` take block Krylov; the rule is written in the summary."""
    monkeypatch.setattr(compute, "EXACT_ALWAYS", 16)
    _pair(tmp_path, 200, 200)
    exact, rules = _row(tmp_path, "default")
    assert exact["rank_k"] == 25 and exact["subspace_steps"] is None
    assert "where 4 blocks of K + 10 would pass half of min(m, n)" in rules["spectrum"]
    oracle_k2, _ = _row(tmp_path, "oracle-k2", "--rank", 2, "--exact-threshold", 200)
    krylov, _ = _row(tmp_path, "rank2", "--rank", 2)
    assert krylov["subspace_steps"] is not None and oracle_k2["subspace_steps"] is None
    forced, rules = _row(tmp_path, "forced", "--exact-threshold", 0)
    assert forced["subspace_steps"] is not None
    assert "min(m, n) <= 0" in rules["spectrum"]
    # the exact path's effective rank is over all 200 singular values, Krylov's over K
    assert exact["effective_rank"] > forced["effective_rank"]
    # the same top-K angles either way (Krylov converged to its stated tolerance)
    assert krylov["angle_right_max"] == pytest.approx(oracle_k2["angle_right_max"], rel=1e-4)
    assert forced["angle_right_max"] == pytest.approx(exact["angle_right_max"], rel=1e-4)


def test_streamed_matrices_take_their_grams_up_to_exact_max():
    """A matrix read in row blocks has no block Krylov fallback: only the Grams' size
    decides (K does not), up to EXACT_MAX columns or the given threshold."""
    o = DiffOptions()
    assert o.streamed_grams(compute.EXACT_MAX) and not o.streamed_grams(compute.EXACT_MAX + 1)
    assert o.streamed_grams(12288)  # an 8192 x 12288 block-read matrix (K = 1024) too
    assert not o.exact_spectrum(12288, 1024)  # where a whole one would take block Krylov
    t = DiffOptions(exact_threshold=100)
    assert t.streamed_grams(100) and not t.streamed_grams(101)


def test_a_streamed_matrix_past_the_threshold_gets_statistics_and_a_note(tmp_path):
    _pair(tmp_path, 300, 48)
    row, _ = _row(tmp_path, "grams", "--chunk-bytes", 4096)
    assert row["effective_rank"] is not None and row["angle_right_max"] is not None
    args = ["--chunk-bytes", 4096, "--exact-threshold", 40]
    row, _ = _row(tmp_path, "stats", *args)
    assert row["effective_rank"] is None and row["frobenius_delta"] > 0
    notes = json.loads((tmp_path / "stats" / "summary.json").read_text())["notes"]
    assert any("48 columns are past the exact threshold: no spectra" in n for n in notes)
