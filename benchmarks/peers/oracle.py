"""Float64 NumPy oracle for the peer comparison (independent of every tool compared).

Reads tensors with ``safetensors`` (bf16 values widened exactly to float64) and computes,
in float64 with LAPACK:

- unchanged counts: the paper's rule |w1 - w0| <= 1e-3 max(|w0|, |w1|) and the older
  tools' |w1 - w0| <= 1e-5, on the exact difference of the stored values;
- dW's full spectrum (``numpy.linalg.svd``): ||dW||_F, sigma_1, stable rank;
- the top-k left and right singular subspaces of W0 and W1 (full SVD) and their principal
  angles by ``scipy.linalg.subspace_angles`` (sine form for small angles, cosine form above
  45 degrees), in degrees;
- the top-k singular-value gap of W0, sigma_k / sigma_{k+1}: a subspace whose gap is close
  to 1 is ill-defined, and no fast method can be expected to find it.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

ETA = 1e-3
ATOL = 1e-5


class Reader:
    """Tensor name -> file of a checkpoint folder (sharded or not)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.where: dict[str, str] = {}
        for f in sorted(glob.glob(str(folder / "*.safetensors"))):
            with safe_open(f, framework="pt") as h:
                for k in h.keys():  # noqa: SIM118 - safe_open handles are not mappings
                    self.where[k] = f

    def names(self) -> list[str]:
        return list(self.where)

    def torch(self, name: str) -> torch.Tensor:
        with safe_open(self.where[name], framework="pt") as h:
            return h.get_tensor(name)

    def f64(self, name: str) -> np.ndarray:
        return self.torch(name).to(torch.float64).numpy()


def unchanged_counts(w0: np.ndarray, w1: np.ndarray, eta: float = ETA, atol: float = ATOL):
    """(count within the relative rule, count within atol, count) in float64."""
    d = np.abs(w1 - w0)
    rel = int(np.count_nonzero(d <= eta * np.maximum(np.abs(w0), np.abs(w1))))
    ab = int(np.count_nonzero(d <= atol))
    return rel, ab, int(d.size)


def model_unchanged(base: str | Path, tuned: str | Path, rows_per_chunk: int = 2048) -> dict:
    """Whole-model parameter-weighted unchanged fractions, tensor by tensor, row chunks."""
    rb, rt = Reader(base), Reader(tuned)
    rel = ab = n = 0
    for name in rb.names():
        if name not in rt.where:
            continue
        a, b = rb.torch(name), rt.torch(name)
        a2 = a.reshape(a.shape[0], -1) if a.dim() > 1 else a.reshape(1, -1)
        b2 = b.reshape(a2.shape)
        for s in range(0, a2.shape[0], rows_per_chunk):
            x = a2[s : s + rows_per_chunk].to(torch.float64).numpy()
            y = b2[s : s + rows_per_chunk].to(torch.float64).numpy()
            r, c, m = unchanged_counts(x, y)
            rel, ab, n = rel + r, ab + c, n + m
    return {"unchanged_rel": rel / n, "unchanged_atol": ab / n, "numel": n}


def matrix_figures(w0: np.ndarray, w1: np.ndarray, k: int = 64) -> dict:
    """Float64 figures of one matrix pair for subspaces of dimension ``k``."""
    return matrix_figures_multi(w0, w1, (k,))[0]


def matrix_figures_multi(w0: np.ndarray, w1: np.ndarray, ks=(64,)) -> list[dict]:
    """:func:`matrix_figures` for several ``k`` from one set of SVDs."""
    from scipy.linalg import subspace_angles

    rel, ab, n = unchanged_counts(w0, w1)
    d = w1 - w0
    s = np.linalg.svd(d, compute_uv=False)
    fro2 = float(np.sum(s * s))
    common = {
        "numel": n,
        "unchanged_rel": rel / n,
        "unchanged_atol": ab / n,
        "frobenius_delta": float(np.sqrt(fro2)),
        "sigma_max_delta": float(s[0]),
        "stable_rank": fro2 / float(s[0]) ** 2 if s[0] > 0 else 0.0,
    }
    u0, s0, vt0 = np.linalg.svd(w0, full_matrices=False)
    u1, _, vt1 = np.linalg.svd(w1, full_matrices=False)
    out = []
    for k in ks:
        k = min(k, *w0.shape)
        left = np.degrees(subspace_angles(u0[:, :k], u1[:, :k]))
        right = np.degrees(subspace_angles(vt0[:k].T, vt1[:k].T))
        out.append(
            {
                **common,
                "rank_k": k,
                "angle_left_max": float(left.max()),
                "angle_left_mean": float(left.mean()),
                "angle_right_max": float(right.max()),
                "angle_right_mean": float(right.mean()),
                "gap_w0": float(s0[k - 1] / s0[k]) if k < len(s0) and s0[k] > 0 else None,
            }
        )
    return out


def sample_figures(base: str | Path, tuned: str | Path, names: list[str], k: int = 64) -> dict:
    rb, rt = Reader(base), Reader(tuned)
    return {name: matrix_figures(rb.f64(name), rt.f64(name), k) for name in names}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="float64 oracle for the peer comparison")
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("--out", required=True)
    p.add_argument("--names", nargs="*", default=[], help="matrices for the full figures")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--no-model", action="store_true", help="skip the whole-model fractions")
    args = p.parse_args(argv)
    out = {"k": args.k, "tensors": sample_figures(args.base, args.tuned, args.names, args.k)}
    if not args.no_model:
        out["model"] = model_unchanged(args.base, args.tuned)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
