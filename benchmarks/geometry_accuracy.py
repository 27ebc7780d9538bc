"""Accuracy of a ``paramgeom diff`` table against the float64 oracle, on sampled matrices.

For each sampled matrix (default: layer 0 k_proj, the middle layer's q_proj and the last
layer's down_proj, as in the peer comparison) the oracle (``benchmarks/peers/oracle.py``:
full float64 LAPACK SVDs, ``scipy.linalg.subspace_angles``) is computed at the K the table
reports for that matrix, and the largest differences are printed as JSON: angles in degrees
(absolute), stable and effective rank and spectral drift over the top K (relative).

Run: ``python benchmarks/geometry_accuracy.py BASE TUNED DIFF_OUT [--names N ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from oracle import Reader, matrix_figures  # noqa: E402

from paramgeom.report.tables import read_table  # noqa: E402

ANGLES = ("angle_left_max", "angle_left_mean", "angle_right_max", "angle_right_mean")


def default_names(rows: list[dict]) -> list[str]:
    """Layer 0 k_proj, the middle layer's q_proj, the last layer's down_proj (those present)."""
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    if not layers:
        return []
    want = [(layers[0], "k"), (layers[len(layers) // 2], "q"), (layers[-1], "down")]
    return [r["name"] for lay, mod in want for r in rows
            if r.get("layer") == lay and r.get("module") == mod and r.get("rank_k")]  # fmt: skip


def effective_rank(s: np.ndarray) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum())


def compare(base: str, tuned: str, diff_out: str, names: list[str] | None = None) -> dict:
    rows = {r["name"]: r for r in read_table(Path(diff_out) / "tensors.parquet")}
    names = names or default_names(list(rows.values()))
    rb, rt = Reader(base), Reader(tuned)
    worst = {
        "angle_deg": 0.0,
        "stable_rank_rel": 0.0,
        "effective_rank_rel": 0.0,
        "spectral_drift_rel": 0.0,
    }
    per = {}
    for name in names:
        row = rows[name]
        w0, w1 = rb.f64(row["base_name"]), rt.f64(name)
        fig = matrix_figures(w0, w1, int(row["rank_k"]))
        s = np.linalg.svd(w1 - w0, compute_uv=False)
        k = int(row["rank_k"])
        s0, s1 = (np.linalg.svd(w, compute_uv=False)[:k] for w in (w0, w1))
        drift = np.linalg.norm(s1 - s0) / np.linalg.norm(s0)
        err = {
            "rank_k": row["rank_k"],
            "gap_w0": fig["gap_w0"],
            "angle_deg": max(abs(row[c] - fig[c]) for c in ANGLES if row[c] is not None),
            "stable_rank_rel": abs(row["stable_rank"] - fig["stable_rank"]) / fig["stable_rank"],
            "effective_rank_rel": abs(row["effective_rank"] - effective_rank(s))
            / effective_rank(s),
            "spectral_drift_rel": abs(row["spectral_drift"] - drift) / drift,
        }
        per[name] = err
        for key in worst:
            worst[key] = max(worst[key], err[key])
    return {"matrices": per, "worst": worst}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("diff_out", help="the --out folder of a paramgeom diff of BASE and TUNED")
    p.add_argument("--names", nargs="*", default=None, help="matrices to check (tuned names)")
    args = p.parse_args(argv)
    print(json.dumps(compare(args.base, args.tuned, args.diff_out, args.names), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
