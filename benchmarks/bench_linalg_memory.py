"""Peak memory of ``randomized_svd`` on the implicit difference vs materialise + svd_lowrank.

Issue 4 claims ``randomized_svd`` never allocates a full-size temporary: it reads ``w0`` and
``w1`` through ``diff_matmul`` (fp32 difference tiles of bounded size) and keeps only
``(m + n) x (k + p)`` float64 bases. This measures it: each method runs in its own fresh
process on the same bf16 pair, and the figure is the process's peak resident set (VmHWM)
minus its resident set just before the call, with the inputs already built and touched.
The plain-torch way forms ``w1.float() - w0.float()`` (an ``m x n`` fp32 matrix) and calls
``torch.svd_lowrank`` with the same rank, oversampling and power iterations.

``python benchmarks/bench_linalg_memory.py --shape 16384x8192``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

K, OVERSAMPLE, POWER_ITERS = 16, 10, 2


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def child(method: str, m: int, n: int) -> dict:
    import torch

    from paramgeom.linalg import randomized_svd

    torch.manual_seed(0)
    w0 = (0.02 * torch.randn(m, n)).to(torch.bfloat16)
    w1 = w0 + (1e-3 * torch.randn(m, n)).to(torch.bfloat16)
    # Warm the code paths on a small pair so lazy allocations (thread pools, kernels) do
    # not count against the measured call.
    a, b = w0[:256, :256].contiguous(), w1[:256, :256].contiguous()
    if method == "paramgeom":
        randomized_svd(a, b, K, OVERSAMPLE, POWER_ITERS, seed=0, exact_threshold=0)
    else:
        torch.svd_lowrank(b.float() - a.float(), q=K + OVERSAMPLE, niter=POWER_ITERS)
    _reset_peak()
    before = _rss_kib("VmRSS")
    if method == "paramgeom":
        _, s, _ = randomized_svd(w0, w1, K, OVERSAMPLE, POWER_ITERS, seed=0, exact_threshold=0)
    else:
        _, s, _ = torch.svd_lowrank(w1.float() - w0.float(), q=K + OVERSAMPLE, niter=POWER_ITERS)
    peak = _rss_kib("VmHWM")
    return {
        "method": method,
        "shape": [m, n],
        "input_bytes": 2 * w0.numel() * w0.element_size(),
        "rss_before_mib": before / 1024,
        "extra_peak_mib": (peak - before) / 1024,
        "s1": float(s[0]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="16384x8192")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    m, n = (int(x) for x in args.shape.lower().split("x"))
    if args.child:
        print(json.dumps(child(args.child, m, n)))
        return 0
    rows = []
    for method in ("paramgeom", "materialise"):
        out = subprocess.run(
            [sys.executable, __file__, "--shape", args.shape, "--child", method],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    full = m * n * 4 / 2**20
    print(f"shape {m}x{n} bf16 pair ({rows[0]['input_bytes'] / 2**20:.0f} MiB of inputs); "
          f"one full fp32 m x n matrix = {full:.0f} MiB; "
          f"k={K}, p={OVERSAMPLE}, q={POWER_ITERS}")  # fmt: skip
    print("| method | extra peak RSS during the call (MiB) | in full fp32 matrices | s1 |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['extra_peak_mib']:.0f} | {r['extra_peak_mib'] / full:.2f} | "
              f"{r['s1']:.6g} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
