"""WeightWatcher (0.7.7) on a checkpoint pair, in its delta mode: the peer runner.

WeightWatcher's documented way to look at a fine-tune against its base:
``watcher = ww.WeightWatcher(model=tuned, base_model=base); details = watcher.analyze()``.
Each analysed layer's matrix becomes ``W_tuned - W_base`` and WeightWatcher computes its
full spectrum (``numpy``/``scipy`` SVD in float64 on CPU; WeightWatcher casts to float64
itself), fits a power law to the eigenvalues ``sigma_i^2`` (alpha), and reports the norm
metrics: ``norm`` = sum sigma_i^2 = ||dW||_F^2, ``spectral_norm`` = sigma_1^2,
``stable_rank`` = norm / spectral_norm (the same definition as ours), and more (alpha,
alpha_weighted, log norms, matrix entropy, rank loss). It does not compute unchanged
fractions or subspace angles; it skips 1-D tensors (norms).

Two inputs, both WeightWatcher's normal API:
- ``--input hf`` (default): Hugging Face models built by ``transformers`` from the folder's
  ``config.json`` and weights (bf16), the form the WeightWatcher docs use for LLMs;
- ``--input dir``: the checkpoint folders themselves (WeightWatcher's lazy safetensors reader).

Everything else is WeightWatcher's default ``analyze()`` (plots off, which is the default).
Run: ``python benchmarks/peers/ww_runner.py BASE TUNED --out result.json [--input hf|dir]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path


def _load_hf(folder: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def analyze(base: str, tuned: str, input_kind: str = "hf") -> dict:
    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    if input_kind == "hf":
        model_base, model_tuned = _load_hf(base), _load_hf(tuned)
    else:
        model_base, model_tuned = str(base), str(tuned)
    t_load = time.perf_counter() - t0
    watcher = ww.WeightWatcher(model=model_tuned, base_model=model_base)
    details = watcher.analyze()
    t_total = time.perf_counter() - t0
    keep = [
        c
        for c in (
            "layer_id",
            "name",
            "longname",
            "N",
            "M",
            "num_evals",
            "norm",
            "spectral_norm",
            "stable_rank",
            "alpha",
            "alpha_weighted",
            "matrix_rank",
            "entropy",
            "warning",
        )
        if c in details.columns
    ]
    rows = []
    for rec in details[keep].to_dict(orient="records"):
        row = {k: _clean(v) for k, v in rec.items()}
        # Our tensor name: WeightWatcher's layer (module) name + ".weight".
        layer = row.get("longname") or row.get("name") or ""
        row["tensor"] = layer if layer.endswith(".weight") else f"{layer}.weight"
        rows.append(row)
    summary = {
        "n_layers": len(rows),
        "stable_rank_mean": (
            sum(r["stable_rank"] for r in rows if r.get("stable_rank") is not None)
            / max(1, sum(1 for r in rows if r.get("stable_rank") is not None))
        ),
    }
    return {
        "tool": "weightwatcher",
        "version": getattr(ww, "__version__", "?"),
        "options": {"input": input_kind, "analyze": "defaults"},
        "seconds_load": t_load,
        "seconds_total": t_total,
        "summary": summary,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("tuned")
    p.add_argument("--out", required=True)
    p.add_argument("--input", choices=("hf", "dir"), default="hf")
    args = p.parse_args(argv)
    result = analyze(args.base, args.tuned, args.input)
    result["pid"] = os.getpid()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
