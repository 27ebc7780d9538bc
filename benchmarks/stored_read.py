"""The scan reading what the file holds, against the host path, in one process.

    python benchmarks/stored_read.py kernel [--device cuda] [--backend B] [--rows R]
                                       [--json FILE]   # diff_stats alone, R x 16384
    python benchmarks/stored_read.py diff PAIR [OUT]   # paramgeom diff --no-spectra on PAIR

``kernel``: fp32 with ``cast="bf16"`` vs ``.to(bfloat16)`` then the bf16 kernel, and FP8 with
``scale_inv`` vs ``dequantize_blocks`` + bf16 rounding then the bf16 kernel (answers checked
equal first), and ``copy_`` of one stored input (the same bytes moved once: "x copy" is a
case's time over it). On a GPU (``--device cuda``) every input lives on the device and the
backend is the one named (``auto`` by default). ``diff``: the engine as it is (each side
handed to the kernel as stored) vs the host path forced (``stored_stats_args`` returning
None: bf16 materialised first, what the engine did before), runs alternating. PAIR holds
``base/`` and ``tuned/`` (``paramgeom synth PAIR --size 1GB --dtype fp8``). Prints best and
median seconds; RESULTS.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time

import torch

import paramgeom
from paramgeom.checkpoints.fp8 import dequantize_blocks, quantize_blocks


def _time(f, repeats: int = 5, device: str = "cpu") -> tuple[float, float]:
    ts = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0], ts[len(ts) // 2]


def _same(a, b) -> None:
    assert (a.n_equal, a.n_within_rel, a.sum_sq_delta) == (
        b.n_equal,
        b.n_within_rel,
        b.sum_sq_delta,
    )


def kernel(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="stored_read.py kernel")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", default=None, help="default: cpu on the CPU, auto on a GPU")
    p.add_argument("--rows", type=int, default=4096, help="rows of the 16384-wide weights")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    device = args.device
    backend = args.backend or ("cpu" if device == "cpu" else "auto")
    torch.manual_seed(0)
    shape = (args.rows, 16384)
    w0 = torch.randn(shape)
    w1 = w0 + 1e-3 * torch.randn(shape)
    (q0, s0), (q1, s1) = quantize_blocks(w0), quantize_blocks(w1)
    w0, w1, q0, q1, s0, s1 = (t.to(device) for t in (w0, w1, q0, q1, s0, s1))
    copy_fp32, copy_fp8 = torch.empty_like(w0), torch.empty_like(q0)
    cases = {
        "fp32 cast in the read": lambda: paramgeom.diff_stats(w0, w1, cast="bf16", backend=backend),
        "fp32 host round": lambda: paramgeom.diff_stats(
            w0.to(torch.bfloat16), w1.to(torch.bfloat16), backend=backend
        ),
        "fp32 copy_": lambda: copy_fp32.copy_(w0),
        "fp8 scales in the read": lambda: paramgeom.diff_stats(
            q0, q1, scale_inv=(s0, s1), backend=backend
        ),
        "fp8 host dequantise": lambda: paramgeom.diff_stats(
            dequantize_blocks(q0, s0).to(torch.bfloat16),
            dequantize_blocks(q1, s1).to(torch.bfloat16),
            backend=backend,
        ),
        "fp8 copy_": lambda: copy_fp8.copy_(q0),
    }
    names = list(cases)
    _same(cases[names[0]](), cases[names[1]]())
    _same(cases[names[3]](), cases[names[4]]())
    ran = paramgeom.diff_stats(q0, q1, scale_inv=(s0, s1), backend=backend).backend
    rows = {}
    for name in names * 2:  # two rounds; the second is reported
        best, median = _time(cases[name], device=device)
        rows[name] = {"best_s": best, "median_s": median}
    for name in names:
        copy = rows[("fp32" if name.startswith("fp32") else "fp8") + " copy_"]["median_s"]
        rows[name]["x_copy"] = rows[name]["median_s"] / copy
        print(
            f"{name:24s} best {rows[name]['best_s']:.4f} s  median {rows[name]['median_s']:.4f} s"
            f"  x copy_ {rows[name]['x_copy']:.2f}"
        )
    if args.json:
        info = {"device": device, "backend": ran, "shape": list(shape), "cases": rows}
        if device == "cuda":
            info["gpu"] = torch.cuda.get_device_name()
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


def diff(pair: str, out: str | None) -> None:
    from paramgeom.engine import compute
    from paramgeom.engine.compute import DiffOptions
    from paramgeom.engine.diff import run_diff

    out = out or tempfile.mkdtemp(prefix="stored_read_")
    real = compute.stored_stats_args

    def run(host: bool):
        compute.stored_stats_args = (lambda a, b: None) if host else real
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = run_diff(f"{pair}/base", f"{pair}/tuned", out, DiffOptions(spectra=False), quiet=True)
        return time.perf_counter() - t, s["model"]["unchanged_fraction"]

    run(False)  # warm the page cache
    res: dict[str, list] = {"stored read": [], "host path": []}
    for _ in range(3):
        for name in res:
            res[name].append(run(name == "host path"))
    compute.stored_stats_args = real
    fractions = {v[0][1] for v in res.values()}
    assert len(fractions) == 1, fractions
    for name, v in res.items():
        ts = sorted(d for d, _ in v)
        print(f"{name:12s} best {ts[0]:.2f} s  median {ts[1]:.2f} s  unchanged {v[0][1]:.6f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernel"]:
        kernel(sys.argv[2:])
    elif sys.argv[1:2] == ["diff"] and len(sys.argv) in (3, 4):
        diff(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    else:
        sys.exit(__doc__)
