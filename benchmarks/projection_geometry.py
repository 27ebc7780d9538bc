"""Full geometry (the default ``paramgeom diff``) of a 235B MoE pair, from per-matrix costs
measured at the model's own shapes.

The model: the published configuration of an open 235B MoE (hidden 4096, 94 layers, 64
query and 4 key/value heads of 128, 128 experts of width 1536 per layer, vocabulary
151,936): 235e9 parameters, 470 GB per bf16 checkpoint. Every matrix has min(m, n) <=
4096, so every one takes the exact path (no randomized iteration, no convergence risk).

For each distinct shape a synthetic bf16 pair holding a few matrices of that shape (Gaussian
base, a 0.5% update: gapless spectra, the float32 windows' hardest case that still passes
their bound) is diffed by the engine itself (``run_diff``, one worker, one thread: what
each ``--workers`` worker does), and the streaming seconds per matrix are taken. The
embedding and the LM head (151,936 x 4096, 1.2 GB per side, streamed in row blocks) are
measured at two row counts and extrapolated linearly in rows (their Grams are; the
reductions are not, and are in both points). Projection: the per-matrix costs times the
matrix counts, divided by the worker count at the parallel efficiency measured on this
machine (``--efficiency``, from the same-run 1 vs 2 worker diff of the 200 MB pair), next to
reading the 940 GB pair at ``--read-gbps`` (overlapped with compute by the engine).

``--model dense200b``: a dense 200B model instead (hidden 12288, 110 layers of q, k, v, o
of 12288 x 12288 and an MLP of 49152 x 12288 and 12288 x 49152, vocabulary 150,000: 12 L
h^2 = 2.0e11 parameters). Every matrix has min(m, n) = 12288 > 4096; at the default K =
min(m, n) / 8 the default rule (``DiffOptions.exact_spectrum``) still takes the exact Gram
path. An MLP pair (2.4 GB) is over the default 1 GiB chunk budget: read in row blocks it
gets right-side figures only, so the projected run and the measurement use
``--chunk-bytes 3GiB``; the embedding and the LM head (150,000 x 12288) are read in row
blocks and measured at two row counts as above. ``down_proj`` (12288 x 49152) is the
transpose of ``up_proj``: the engine computes on the smaller side either way, so it is
measured once and counted for both (a derived row).

Run: ``python benchmarks/projection_geometry.py --work DIR`` (about 6 minutes on the 2-core
VM; DIR gets the synthetic pairs, about 1.5 GB); ``--model dense200b`` about 45 minutes
(6 GB of pairs); prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from paramgeom.engine.compute import DiffOptions  # noqa: E402
from paramgeom.engine.diff import run_diff  # noqa: E402

LAYERS, EXPERTS, HIDDEN, EXPERT_W, VOCAB = 94, 128, 4096, 1536, 151_936
Q_W, KV_W = 64 * 128, 4 * 128
# (label, (m, n), matrices in the model, matrices in the measured pair)
SHAPES = [
    ("expert gate_proj / up_proj", (EXPERT_W, HIDDEN), 2 * EXPERTS * LAYERS, 4),
    ("expert down_proj", (HIDDEN, EXPERT_W), EXPERTS * LAYERS, 4),
    ("q_proj", (Q_W, HIDDEN), LAYERS, 1),
    ("o_proj", (HIDDEN, Q_W), LAYERS, 1),
    ("k_proj / v_proj", (KV_W, HIDDEN), 2 * LAYERS, 4),
    ("router", (EXPERTS, HIDDEN), LAYERS, 8),
]
EMBED = ("embed_tokens / lm_head (row blocks)", (VOCAB, HIDDEN), 2)
EMBED_ROWS = (8192, 24576)  # measured row counts, streamed in blocks as the real one is
UPDATE = 0.005

D_LAYERS, D_HIDDEN, D_VOCAB = 110, 12288, 150_000
# (label, (m, n), matrices in the model, matrices measured: 0 for a derived row whose cost
# is the previous row's)
DENSE_SHAPES = [
    ("q_proj / k_proj / v_proj / o_proj", (D_HIDDEN, D_HIDDEN), 4 * D_LAYERS, 1),
    ("up_proj", (4 * D_HIDDEN, D_HIDDEN), D_LAYERS, 1),
    ("down_proj (as up_proj, transposed)", (D_HIDDEN, 4 * D_HIDDEN), D_LAYERS, 0),
]
D_EMBED = ("embed_tokens / lm_head (row blocks)", (D_VOCAB, D_HIDDEN), 2)
# Both at least as many rows as columns, so K = 12288 / 8 as in the real one.
D_EMBED_ROWS = (16384, 24576)
DENSE_CHUNK = 3 << 30  # a 2.4 GB MLP pair held whole: spectra need it (see the docstring)


def _pair(folder: Path, shape: tuple[int, int], count: int, seed: int) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(seed)
    base, tuned = {}, {}
    for i in range(count):
        w = torch.randn(shape, generator=g) * 0.02
        base[f"m{i}.weight"] = w.to(torch.bfloat16)
        tuned[f"m{i}.weight"] = (w + UPDATE * 0.02 * torch.randn(shape, generator=g)).to(
            torch.bfloat16
        )
    for name, d in (("base", base), ("tuned", tuned)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        save_file(d, str(folder / name / "model.safetensors"))
    return folder / "base", folder / "tuned"


def _seconds(folder: Path, shape, count: int, chunk_bytes: int | None = None) -> float:
    """Streaming seconds of one diff of a pair of ``count`` matrices of ``shape``."""
    base, tuned = _pair(folder, shape, count, seed=sum(shape))
    opts = DiffOptions() if chunk_bytes is None else DiffOptions(chunk_bytes=chunk_bytes)
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)
    summary = run_diff(base, tuned, out, opts, quiet=True, workers=1)
    shutil.rmtree(folder)
    return summary["run"]["seconds_streaming"]


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the synthetic pairs (deleted)")
    p.add_argument("--model", choices=["moe235b", "dense200b"], default="moe235b")
    p.add_argument("--workers", type=int, default=2, help="workers of the projected run")
    p.add_argument("--efficiency", type=float, required=True,
                   help="measured speedup of --workers W over 1, divided by W")  # fmt: skip
    p.add_argument("--read-gbps", type=float, default=1.95, help="cold read rate, GB/s")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(1)  # one worker's thread
    work = Path(args.work)
    rows, params, core_s = [], 0, 0.0
    started = time.perf_counter()
    dense = args.model == "dense200b"
    per = 0.0
    for label, shape, n_model, n_pair in DENSE_SHAPES if dense else SHAPES:
        if n_pair:
            chunk = DENSE_CHUNK if dense else None
            per = _seconds(work / label.split()[0], shape, n_pair, chunk) / n_pair
            print(f"{label}: {per:.1f} s per matrix", file=sys.stderr, flush=True)
        params += n_model * math.prod(shape)
        core_s += per * n_model
        rows.append((label, shape, n_model, per, per * n_model))
    label, (vocab, hidden), n_model = D_EMBED if dense else EMBED
    pts = [
        (r, _seconds(work / "embed", (r, hidden), 1, chunk_bytes=r * hidden * 2 // 4))
        for r in (D_EMBED_ROWS if dense else EMBED_ROWS)
    ]
    print(f"{label}: {pts}", file=sys.stderr, flush=True)
    (r0, t0), (r1, t1) = pts
    per = t0 + (t1 - t0) * (vocab - r0) / (r1 - r0)
    params += n_model * vocab * hidden
    core_s += per * n_model
    rows.append((label, (vocab, hidden), n_model, per, per * n_model))
    pair_gb = 2 * 2 * params / 1e9
    wall = core_s / (args.workers * args.efficiency)
    read = pair_gb / args.read_gbps
    print(f"Parameters: {params / 1e9:.1f}e9 ({pair_gb:.0f} GB per bf16 pair). Measured in "
          f"{time.perf_counter() - started:.0f} s.\n")  # fmt: skip
    print("| matrices | shape | count | s per matrix (1 thread) | core-hours |")
    print("|---|---|---|---|---|")
    measured_at = ", ".join(f"{r:,} rows: {t:.1f} s" for r, t in pts)
    for label, shape, n, per, tot in rows:
        extra = f" (extrapolated in rows from {measured_at})" if label == EMBED[0] else ""
        extra += " (derived)" if "transposed" in label else ""
        print(f"| {label} | {shape[0]} x {shape[1]} | {n:,} | {per:.3f}{extra} | "
              f"{tot / 3600:.2f} |")  # fmt: skip
    print(f"| **all** | | | | **{core_s / 3600:.1f}** |\n")
    print(f"Projected default diff on this machine, {args.workers} workers at efficiency "
          f"{args.efficiency:.2f}: compute {_hours(wall)}, read {_hours(read)} at "
          f"{args.read_gbps} GB/s (overlapped): **{_hours(max(wall, read))}**, "
          f"{'compute' if wall > read else 'storage'}-bound.")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "params": params, "core_seconds": core_s, "wall_seconds": wall,
            "read_seconds": read, "embed_points": pts,
            "rows": [{"label": r[0], "shape": r[1], "count": r[2], "s_per_matrix": r[3]}
                     for r in rows],
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
