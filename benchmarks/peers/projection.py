"""Numbers behind benchmarks/projection.md: a 200B-parameter bf16 pair and trajectory.

CPU rows scale the marginal per-byte costs measured by run.py (``DATA/results.json``,
DATA being run.py's ``--data`` folder: slope of a least-squares line through wall time vs
pair bytes over every size a tool finished, so start-up costs drop out)
and the cold read rate of this VM's disk. GPU rows are derived from the stated
assumptions below only: no GPU was lent to the session that wrote them (NOT MEASURED).

Run: ``python benchmarks/peers/projection.py --results DATA/results.json``
prints the tables in Markdown (the figures of benchmarks/projection.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

P = 200e9  # parameters
BYTES = 2 * P  # one bf16 checkpoint
PAIR = 2 * BYTES
TRAJ_CKPTS = 8
TRAJ = (1 + TRAJ_CKPTS) * BYTES  # base + 8 checkpoints, each read once

# GPU / node assumptions (H100 SXM node; none measured here).
A = {
    "hbm_Bps": 3.35e12,  # H100 HBM3 peak
    "hbm_eff": 0.8,  # fraction the diff_stats kernel reaches (its target: 90% of copy)
    "fp32_flops": 30e12,  # achieved by paramgeom's SIMT fp32 diff_matmul (peak 67 TFLOP/s)
    "h2d_Bps": 20e9,  # per GPU: pin-copy (loader.to_device pins by copy) + PCIe Gen5 x16
    "nvme1_Bps": 7e9,  # one PCIe Gen4 NVMe drive, sequential read
    "nvme8_Bps": 25e9,  # 8 NVMe drives in RAID0 (DGX-class node), aggregate
}
# Passes over each matrix (one diff_matmul pass = 2 * l flops per parameter), as the
# randomized path ran when benchmarks/projection.md was generated (2026-12-03):
# randomized_svd(dW): 2 + 2 * power_iters = 6; top_subspaces(W0) cold and W1 warm: 2 per
# iteration, 1..30 iterations each. Synth (Gaussian, no spectral gap) hits the cap: 126.
# NOT the current path: since 2026-12-07 both are block Krylov (2 passes per block, blocks
# until every top-k Ritz residual is <= 1e-6 or 30 blocks), and a basis that would pass
# half of min(m, n) hands over to the exact Gram path (p^2 max(m, n) flops and one
# reduction), which every gapless synth matrix does; and K is min(m, n) // 8, not 512.
# A regenerated projection needs this model rewritten and measured at 200B widths.
PASSES = {"best": 6 + 2 * 3 + 2 * 2, "synth_worst": 6 + 2 * 30 + 2 * 30}
L_K64, L_K512 = 64 + 10, 512 + 10
TRAJ_L, TRAJ_PASSES = 16 + 10, 6  # trajectory: warm-started range finder per step


def _fmt_s(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def measured(results: dict) -> dict:
    sizes = sorted(results["sizes"].values(), key=lambda e: e["pair"]["bytes_per_checkpoint"])
    # Storage rate: the cold read of the largest pair (small files understate it).
    out: dict = {"cold_Bps": [e["read"]["cold_gbps"] for e in sizes if "read" in e][-1] * 1e9}
    for tool in (
        "paramgeom_stats",
        "plain_torch_stats",
        "paramgeom_k64",
        "plain_torch",
        "paramgeom_default",
        "plain_torch_exact",
        "paramgeom_spectra",
        "weightwatcher",
    ):
        pts = [
            (2 * e["pair"]["bytes_per_checkpoint"], e["runs"][tool]["wall_s"])
            for e in sizes
            if tool in e.get("runs", {})
            and e["runs"][tool].get("rc") == 0
            and not e["runs"][tool].get("timed_out")
        ]
        if len(pts) >= 2:  # least-squares line wall = a + b * bytes over every size
            n = len(pts)
            mx = sum(x for x, _ in pts) / n
            my = sum(y for _, y in pts) / n
            sxx = sum((x - mx) ** 2 for x, _ in pts)
            slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
            out[tool] = {"s_per_B": slope, "fixed_s": my - slope * mx,
                         "at_bytes": pts[-1][0], "n": n}  # fmt: skip
        elif pts:
            out[tool] = {"s_per_B": pts[0][1] / pts[0][0], "fixed_s": 0.0,
                         "at_bytes": pts[0][0], "n": 1}  # fmt: skip
    return out


def largest_hidden(results: dict, tool: str) -> int:
    """The largest hidden size among the synth sizes ``tool`` finished."""
    return max(
        e["pair"]["spec"]["hidden_size"]
        for e in results["sizes"].values()
        if e.get("runs", {}).get(tool, {}).get("rc") == 0
    )


def gpu_rows() -> list[tuple[str, str, float, str]]:
    rows = []
    for n in (1, 8):
        for storage, rate in (("1 NVMe", A["nvme1_Bps"]), ("8-NVMe RAID0", A["nvme8_Bps"])):
            read = PAIR / rate
            h2d = PAIR / (n * A["h2d_Bps"])
            scan = PAIR / (n * A["hbm_Bps"] * A["hbm_eff"])
            t = max(read, h2d, scan)
            bound = "storage" if t == read else ("host->GPU copy" if t == h2d else "HBM")
            rows.append((f"{n} GPU, {storage}", "diff --no-spectra", t, bound))
            for label, l, passes in (
                ("diff --rank 64 (best..synth-worst iterations)", L_K64, PASSES),
                ("diff default k=512 (randomized: min(m,n) > 4096)", L_K512, PASSES),
            ):
                lo = passes["best"] * 2 * l * P / (n * A["fp32_flops"])
                hi = passes["synth_worst"] * 2 * l * P / (n * A["fp32_flops"])
                t_lo, t_hi = max(read, h2d, lo), max(read, h2d, hi)
                b = "storage" if t_hi == read else ("fp32 compute" if t_hi == hi else "copy")
                rows.append((f"{n} GPU, {storage}", label, (t_lo, t_hi), b))
            tread = TRAJ / rate
            th2d = TRAJ / (n * A["h2d_Bps"])
            tcomp = TRAJ_CKPTS * TRAJ_PASSES * 2 * TRAJ_L * P / (n * A["fp32_flops"])
            t = max(tread, th2d, tcomp)
            b = "storage" if t == tread else ("fp32 compute" if t == tcomp else "copy")
            rows.append((f"{n} GPU, {storage}", "trajectory, 8 checkpoints", t, b))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--results", required=True, help="run.py's DATA/results.json (required, no default)"
    )
    args = p.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    m = measured(results)
    print("## CPU (this VM), from measured per-byte costs\n")
    print(f"Cold read rate (largest pair): {m['cold_Bps'] / 1e9:.2f} GB/s\n")
    print("| run | marginal s per GB read (sizes fitted) | compute, 200B | read at the cold rate | "
          "projected | bound by |")  # fmt: skip
    print("|---|---|---|---|---|---|")

    def row(name, s_per_B, n, total_bytes, overlapped, note=""):
        comp = s_per_B * total_bytes
        rd = total_bytes / m["cold_Bps"]
        t = max(comp, rd) if overlapped else comp + rd
        bound = "storage read" if rd >= comp else "compute"
        how = "overlapped" if overlapped else "load, then compute"
        print(f"| {name} | {s_per_B * 1e9:.2f} ({n}) | {_fmt_s(comp)} | {_fmt_s(rd)} | "
              f"{_fmt_s(t)} ({how}) | {bound}{note} |")  # fmt: skip

    for tool, v in m.items():
        if tool == "cold_Bps":
            continue
        note = ""
        if tool in ("plain_torch_stats", "plain_torch"):
            note = "; needs both models in RAM (800 GB)"
        if tool == "weightwatcher":
            note = "; HF input: both models in RAM (800 GB)"
        if tool == "paramgeom_default":
            note = "; exact Gram path measured (min(m,n) <= 4096): NOT what 200B runs"
        if tool == "plain_torch_exact":  # full SVDs: cost per parameter grows with min(m, n)
            note = "; needs both models in RAM (800 GB); full SVDs, see the derived row"
        row(f"`{tool}`", v["s_per_B"], f"n={v['n']}", PAIR, tool.startswith("paramgeom"), note)
    if "paramgeom_k64" in m:  # default at 200B scale: randomized path with k = 512
        row("`paramgeom diff` default at 200B (derived: k64 cost x 522/74)",
            m["paramgeom_k64"]["s_per_B"] * L_K512 / L_K64, "derived", PAIR, True)  # fmt: skip
    # Full SVDs cost O(min(m, n)) per parameter, min(m, n) being the hidden size: scale the
    # fitted cost by 12288 over the largest hidden size the tool ran at.
    for tool, note in (("plain_torch_exact", "; needs both models in RAM (800 GB)"),
                       ("weightwatcher", "; HF input: both models in RAM (800 GB)")):  # fmt: skip
        if tool not in m:
            continue
        hidden = largest_hidden(results, tool)
        row(f"`{tool}` at 200B (derived: x hidden 12288 / {hidden})",
            m[tool]["s_per_B"] * 12288 / hidden, "derived", PAIR, False, note)  # fmt: skip
    tr = results.get("trajectory")
    if tr and tr.get("rc") == 0:
        fixed = m.get("paramgeom_stats", {}).get("fixed_s", 0.0)
        per = (tr["wall_s"] - fixed) / tr["bytes_total"]
        row(f"`paramgeom trajectory`, base + {TRAJ_CKPTS} checkpoints (3.6 TB)", per,
            "1 size", TRAJ, True)  # fmt: skip
    print("\n## GPU (derived, NOT MEASURED)\n")
    print("| setup | run | time | bound by |")
    print("|---|---|---|---|")
    for setup, run, t, bound in gpu_rows():
        ts = f"{_fmt_s(t[0])} .. {_fmt_s(t[1])}" if isinstance(t, tuple) else _fmt_s(t)
        print(f"| {setup} | {run} | {ts} | {bound} |")
    print(
        f"\nAssumptions: {json.dumps(A)}; passes {PASSES}; l = {L_K64} / {L_K512}; "
        f"trajectory l = {TRAJ_L}, {TRAJ_PASSES} passes per step."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
