"""Independent float64 NumPy oracles for the tests (no paramgeom, no torch arithmetic)."""

from __future__ import annotations

import numpy as np
import torch


def to_f64(w: torch.Tensor) -> np.ndarray:
    """Exact float64 values of a tensor (every supported format widens exactly)."""
    with np.errstate(invalid="ignore"):  # signalling-NaN payloads widen to quiet NaNs
        return w.detach().cpu().to(torch.float32).numpy().astype(np.float64)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 round-to-nearest-even (NaN -> quiet NaN), back to float64."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32)
    r = np.where(np.isnan(x), np.uint32(0x7FC00000), r)
    return r.view(np.float32).astype(np.float64)


def diff_stats_oracle(a, b, rel_tols=(1e-3,), abs_tols=(), per_row_shape=None):
    """Counts, sums (and, with per_row_shape = (rows, cols), per-row changed / squared
    delta) in float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    fin = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", over="ignore"):
        d = b - a
        ad = np.abs(d)
        m = np.maximum(np.abs(a), np.abs(b))
        out = {
            "numel": a.size,
            "n_equal": int(np.count_nonzero(a == b)),
            "n_within_rel": tuple(int(np.count_nonzero(fin & (ad <= e * m))) for e in rel_tols),
            "n_within_abs": tuple(int(np.count_nonzero(fin & (ad <= t))) for t in abs_tols),
            "n_nonfinite_w0": int(np.count_nonzero(~np.isfinite(a))),
            "n_nonfinite_w1": int(np.count_nonzero(~np.isfinite(b))),
            "sum_sq_delta": float(np.sum(np.where(fin, d * d, 0.0))),
            "sum_sq_w0": float(np.sum(np.where(fin, a * a, 0.0))),
            "sum_sq_w1": float(np.sum(np.where(fin, b * b, 0.0))),
            "sum_w0w1": float(np.sum(np.where(fin, a * b, 0.0))),
            "max_abs_delta": float(np.max(np.where(fin, ad, 0.0))) if a.size else 0.0,
        }
        if per_row_shape is not None:
            rows, cols = per_row_shape
            same = fin & (ad <= rel_tols[0] * m) if rel_tols else a == b
            out["row_changed"] = cols - same.reshape(rows, cols).sum(axis=1)
            out["row_sq_delta"] = np.where(fin, d * d, 0.0).reshape(rows, cols).sum(axis=1)
    return out


def assert_matches(stats, expected: dict, rtol: float = 1e-12) -> None:
    """Counts and max exactly, sums to ``rtol`` relative (absolute floor 1e-300)."""
    for key in (
        "numel",
        "n_equal",
        "n_within_rel",
        "n_within_abs",
        "n_nonfinite_w0",
        "n_nonfinite_w1",
        "max_abs_delta",
    ):
        got = getattr(stats, key)
        assert got == expected[key], f"{key}: got {got}, expected {expected[key]}"
    for key in ("sum_sq_delta", "sum_sq_w0", "sum_sq_w1", "sum_w0w1"):
        got, want = getattr(stats, key), expected[key]
        err = abs(got - want) / max(abs(want), 1e-300)
        assert abs(got - want) <= rtol * abs(want) + 1e-300, (
            f"{key}: got {got!r}, expected {want!r} (relative error {err:.3g})"
        )
    if "row_changed" in expected:
        assert stats.row_changed is not None
        np.testing.assert_array_equal(
            stats.row_changed.cpu().numpy().reshape(-1), expected["row_changed"]
        )
        np.testing.assert_allclose(
            stats.row_sq_delta.cpu().numpy().reshape(-1),
            expected["row_sq_delta"],
            rtol=rtol,
            atol=1e-300,
        )


def assert_matrix_close(
    got: torch.Tensor, want: np.ndarray, scale: np.ndarray, rtol: float, atol: float = 1e-300
) -> None:
    """A matrix product against its float64 oracle: Frobenius error within ``rtol`` of the
    result's norm, every entry within ``rtol`` of its own error scale (e.g. ``(|D| |x|)_ij``),
    and no NaN or Inf."""
    g = got.detach().cpu().numpy().astype(np.float64)
    assert g.shape == want.shape, f"shape {g.shape}, expected {want.shape}"
    assert np.isfinite(g).all(), "non-finite values in the result"
    err = np.abs(g - want)
    norm = np.linalg.norm(want)
    assert np.linalg.norm(err) <= rtol * norm + atol, (
        f"relative Frobenius error {np.linalg.norm(err) / max(norm, 1e-300):.3g} > {rtol}"
    )
    bad = err > rtol * scale + atol
    assert not bad.any(), (
        f"{int(bad.sum())} entries off; worst {np.max(err / np.maximum(scale, 1e-300)):.3g}"
    )
