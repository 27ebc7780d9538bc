"""The plain-torch checkpoint-diff script people write today: the peer baseline.

Written the way the public analysis scripts do it (the RL update-sparsity script of
Mukherjee et al. 2025, ``check_sparsity.py``, and the OPD / RLVR rotation notebooks): load
both models whole, then loop over the tensors:

- ``delta = w1 - w0`` in the stored dtype, unchanged when
  ``torch.isclose(delta, 0, atol=1e-5)`` (the sparsity script's rule);
- the relative rule ``torch.isclose(w1, w0, rtol=1e-3, atol=0)`` on float32 copies
  (|w1 - w0| <= 1e-3 |w0|; on bf16 values it equals the paper's
  ``1e-3 * max(|w0|, |w1|)`` rule, both being a bit compare there);
- for 2-D tensors: ``torch.svd_lowrank(dW, q=64)`` for the stable rank
  ``||dW||_F^2 / sigma_1^2``, ``torch.svd_lowrank(W0, q=64)`` and
  ``torch.svd_lowrank(W1, q=64)`` for the top-64 singular subspaces, and the principal
  angles ``arccos(svdvals(U0^T U1))`` (cosine form), left and right, in degrees.

``--svd full`` is the same script written for correct answers instead of speed (what a
careful user does once they see that ``svd_lowrank``'s two power iterations cannot find the
top-64 subspace of a matrix without a spectral gap): ``torch.linalg.svdvals(dW)`` for the
stable rank and ``torch.linalg.svd(W, full_matrices=False)`` of W0 and W1 (float32, the
dtype such a script computes in), top-``q`` columns for the angles. It is the
equal-accuracy baseline for paramgeom's spectral runs.

Nothing here is tuned for speed beyond what such a script does; nothing is crippled
either: it loads with ``safetensors`` (faster and lighter than building the Hugging Face
model, which ``--load hf`` does for the record), uses all of torch's threads, and one
global ``torch.manual_seed`` as the scripts do (so every ``svd_lowrank`` call draws its
own Gaussian test matrix).

Run: ``python benchmarks/peers/plain_torch.py BASE TUNED --out result.json [--q 64]
[--no-svd | --svd lowrank|full] [--load safetensors|hf]``. Writes one JSON: per-tensor
rows and timings.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time
from pathlib import Path

import torch

ATOL = 1e-5
RTOL = 1e-3


def load_state_dict(folder: str | Path, how: str = "safetensors") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (or one .safetensors file), loaded whole."""
    folder = Path(folder)
    if how == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
        return dict(model.state_dict())
    from safetensors.torch import load_file

    files = [str(folder)] if folder.is_file() else sorted(glob.glob(str(folder / "*.safetensors")))
    if not files:
        raise SystemExit(f"no .safetensors files in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def _angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = torch.linalg.svdvals(a.T @ b).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


@torch.no_grad()
def analyze(
    base: str | Path,
    tuned: str | Path,
    q: int = 64,
    svd: bool = True,
    load: str = "safetensors",
    seed: int = 0,
    method: str = "lowrank",
) -> dict:
    """The baseline's figures for a checkpoint pair (see the module docstring)."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    sd0 = load_state_dict(base, load)
    sd1 = load_state_dict(tuned, load)
    t_load = time.perf_counter() - t0

    missing = [k for k in sd0 if k not in sd1] + [k for k in sd1 if k not in sd0]
    rows = []
    for name, w0 in sd0.items():
        if name not in sd1:
            continue
        w1 = sd1[name]
        delta = w1 - w0  # stored dtype, as the sparsity script does
        row = {
            "name": name,
            "shape": list(w0.shape),
            "numel": w0.numel(),
            "unchanged_atol": torch.isclose(delta, torch.zeros_like(delta), atol=ATOL).sum().item()
            / delta.numel(),
            "nonzero_delta": (delta != 0).sum().item() / delta.numel(),
        }
        w0f, w1f = w0.float(), w1.float()
        row["unchanged_rel"] = (
            torch.isclose(w1f, w0f, rtol=RTOL, atol=0.0).sum().item() / w0f.numel()
        )
        if svd and w0.dim() == 2:
            d = w1f - w0f
            fro2 = float(d.pow(2).sum())
            k = min(q, *w0.shape)
            if method == "full":
                s = torch.linalg.svdvals(d)
                u0, _, v0h = torch.linalg.svd(w0f, full_matrices=False)
                u1, _, v1h = torch.linalg.svd(w1f, full_matrices=False)
                u0, v0, u1, v1 = u0[:, :k], v0h[:k].T, u1[:, :k], v1h[:k].T
            else:
                _, s, _ = torch.svd_lowrank(d, q=k)
                u0, _, v0 = torch.svd_lowrank(w0f, q=k)
                u1, _, v1 = torch.svd_lowrank(w1f, q=k)
            row["frobenius_delta"] = math.sqrt(fro2)
            row["sigma_max_delta"] = float(s[0])
            row["stable_rank"] = fro2 / float(s[0]) ** 2 if float(s[0]) > 0 else 0.0
            left, right = _angles_deg(u0, u1), _angles_deg(v0, v1)
            row.update(
                rank_k=k,
                angle_left_max=float(left.max()),
                angle_left_mean=float(left.mean()),
                angle_right_max=float(right.max()),
                angle_right_mean=float(right.mean()),
            )
        rows.append(row)
        del delta, w0f, w1f
    total = sum(r["numel"] for r in rows)
    summary = {
        "unchanged_atol": sum(r["numel"] * r["unchanged_atol"] for r in rows) / total,
        "unchanged_rel": sum(r["numel"] * r["unchanged_rel"] for r in rows) / total,
        "n_tensors": len(rows),
        "numel": total,
    }
    mats = [r for r in rows if "stable_rank" in r]
    if mats:
        summary["stable_rank_mean"] = sum(r["stable_rank"] for r in mats) / len(mats)
        summary["angle_left_max_mean"] = sum(r["angle_left_max"] for r in mats) / len(mats)
        summary["angle_right_max_mean"] = sum(r["angle_right_max"] for r in mats) / len(mats)
    return {
        "tool": "plain_torch",
        "options": {
            "q": q,
            "svd": method if svd else None,
            "load": load,
            "atol": ATOL,
            "rtol": RTOL,
        },
        "threads": torch.get_num_threads(),
        "seconds_load": t_load,
        "seconds_total": time.perf_counter() - t0,
        "missing": missing,
        "summary": summary,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--q", type=int, default=64, help="torch.svd_lowrank q (default 64)")
    p.add_argument("--no-svd", action="store_true", help="unchanged fractions only")
    p.add_argument(
        "--svd",
        choices=("lowrank", "full"),
        default="lowrank",
        help="torch.svd_lowrank (the scripts' way, default) or full torch.linalg.svd",
    )
    p.add_argument("--load", choices=("safetensors", "hf"), default="safetensors")
    args = p.parse_args(argv)
    result = analyze(
        args.base, args.tuned, q=args.q, svd=not args.no_svd, load=args.load, method=args.svd
    )
    result["pid"] = os.getpid()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
