"""Peer comparison: paramgeom diff vs WeightWatcher vs the plain-torch script, by model size.

For each size: writes the ``paramgeom synth`` pair if missing (``DATA/s<size>/base|tuned``),
measures the storage read rate of the pair (evicted from the page cache first, so the
tools then all start from a warm cache), runs every tool as a separate process under
``/usr/bin/time -f "%e %M %U %S"`` (wall, peak RSS, CPU; a sampler also records the peak
anonymous and file-backed RSS from /proc), computes the float64 oracle on the whole-model
unchanged fractions and on a sample of matrices, checks agreement, and writes
``DATA/results.json``, ``benchmarks/peers/RESULTS.md`` and ``benchmarks/peers/scaling.png``.

Rerun everything (about 25 min on the 2-core VM)::

    . /work/venv/bin/activate
    python benchmarks/peers/run.py --sizes 200MB 1GB 3GB

``--report-only`` rewrites RESULTS.md and the plot from ``DATA/results.json``. Generated
data stay under ``--data`` (default /work/data/peers), never in the repository. Every tool
gets a fresh output folder per run (paramgeom's journal would otherwise resume).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import oracle as oracle_mod  # noqa: E402

HAND_MARK = "<!-- hand-written below: kept when run.py rewrites this file -->"

# name -> (group, description); the command is built in _command.
TOOLS: dict[str, tuple[str, str]] = {
    "paramgeom_stats": (
        "paramgeom",
        "`paramgeom diff --no-spectra`: unchanged fractions (1e-3 bf16 rule and atol 1e-5), "
        "equal fraction, norms, max |dW| per tensor; no SVD",
    ),
    "plain_torch_stats": (
        "plain torch",
        "plain-torch script `--no-svd`: load both whole, `isclose(dW, 0, atol=1e-5)` and "
        "`isclose(w1, w0, rtol=1e-3)` per tensor (what the RL-sparsity script computes)",
    ),
    "paramgeom_k64": (
        "paramgeom",
        "`paramgeom diff --rank 64 --exact-threshold 0`: the peers' work: statistics + dW's "
        "top-64 spectrum by the randomized range finder (stable rank) + top-64 left/right "
        "subspaces of W0 and W1 (W1's warm-started from W0's) + principal angles + drift",
    ),
    "plain_torch": (
        "plain torch",
        "plain-torch script: the above + `svd_lowrank(q=64)` of dW (stable rank), of W0 and "
        "of W1 (top-64 subspaces) + cosine-form principal angles, per 2-D tensor",
    ),
    "paramgeom_default": (
        "paramgeom",
        "`paramgeom diff` defaults: statistics + dW's exact spectrum (float64 Gram, "
        "min(m,n) <= 4096) + top-512 subspaces of W0 and W1 + angles + drift + plots/report",
    ),
    "weightwatcher": (
        "weightwatcher",
        "WeightWatcher 0.7.7 `WeightWatcher(model=tuned, base_model=base).analyze()` on HF "
        "models: full float64 SVD of every dW (stable rank, norms, power-law alpha, entropy)",
    ),
    "weightwatcher_dir": (
        "weightwatcher",
        "WeightWatcher as above on the safetensors folders (its lazy reader) instead of HF models",
    ),
    "plain_torch_hf": (
        "plain torch",
        "plain-torch script, models loaded with transformers' AutoModelForCausalLM",
    ),
}
DEFAULT_TOOLS = [
    "paramgeom_stats",
    "plain_torch_stats",
    "paramgeom_k64",
    "plain_torch",
    "paramgeom_default",
    "weightwatcher",
]


# ---------------------------------------------------------------------------------- helpers


def _size_label(nbytes: int) -> str:
    return f"{nbytes / 1e9:g}GB" if nbytes >= 1e9 else f"{nbytes / 1e6:g}MB"


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _busy_jiffies() -> tuple[int, int]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f[:8]) - idle, sum(f[:8])


def _wait_quiet(limit: float, wait_s: float) -> float:
    """Wait up to ``wait_s`` for the 1-minute load to drop below ``limit``; return it."""
    t0 = time.time()
    load = _loadavg()
    while load >= limit and time.time() - t0 < wait_s:
        time.sleep(10)
        load = _loadavg()
    return load


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


class RssSampler(threading.Thread):
    """Peak VmRSS / RssAnon / RssFile of the process tree under ``pid`` (0.2 s polls)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak = pid, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            todo, tot = [self.pid], {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
            while todo:
                p = todo.pop()
                st = _status_kb(p)
                if p != self.pid:  # /usr/bin/time itself is not counted
                    for k in tot:
                        tot[k] += st.get(k, 0)
                todo += _children(p)
            for k in tot:
                self.peak[k] = max(self.peak[k], tot[k])
            self._stop_evt.wait(0.2)

    def stop(self) -> dict[str, int]:
        self._stop_evt.set()
        self.join()
        return self.peak


def run_measured(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run ``cmd`` under /usr/bin/time; wall, peak RSS, CPU, contention, exit status."""
    timefile = log.with_suffix(".time")
    busy0, tot0 = _busy_jiffies()
    load0 = _loadavg()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%e %M %U %S", "-o", str(timefile), *cmd],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        sampler = RssSampler(proc.pid)
        sampler.start()
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started here
            rc = proc.wait()
    wall_outer = time.perf_counter() - t0
    peak = sampler.stop()
    busy1, tot1 = _busy_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    out = {
        "cmd": cmd,
        "rc": rc,
        "timed_out": timed_out,
        "timeout_s": timeout,
        "wall_s": wall_outer,
        "load_before": load0,
        "load_after": _loadavg(),
        "peak_rss_anon_mb": peak["RssAnon"] / 1024,
        "peak_rss_file_mb": peak["RssFile"] / 1024,
        "peak_rss_sampled_mb": peak["VmRSS"] / 1024,
        "log": str(log),
    }
    text = timefile.read_text().split() if timefile.exists() else []
    if not timed_out and len(text) >= 4:
        try:
            wall, maxrss, usr, sys_ = (float(x) for x in text[-4:])
            out.update(wall_s=wall, peak_rss_mb=maxrss / 1024, cpu_s=usr + sys_)
        except ValueError:
            pass
    if "cpu_s" in out:
        # CPU seconds that other processes used during the run (contention indicator).
        others = (busy1 - busy0) / hz - out["cpu_s"]
        out["others_cpu_s"] = max(0.0, others)
        out["others_cores"] = max(0.0, others) / max(out["wall_s"], 1e-9)
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def evict(folder: Path) -> None:
    """Drop this checkpoint's pages from the page cache (only these files)."""
    for f in _files(folder):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (a pair just written) are not dropped otherwise
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(folders: list[Path]) -> dict:
    """Cold sequential read of the pair (after eviction): bytes, seconds, GB/s."""
    for f in folders:
        evict(f)
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    n, t0 = 0, time.perf_counter()
    for folder in folders:
        for f in _files(folder):
            with open(f, "rb", buffering=0) as fh:
                while True:
                    k = fh.readinto(view)
                    if not k:
                        break
                    n += k
    dt = time.perf_counter() - t0
    # A second (warm) pass: page-cache read rate.
    t1 = time.perf_counter()
    for folder in folders:
        for f in _files(folder):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
    dw = time.perf_counter() - t1
    return {"bytes": n, "cold_s": dt, "cold_gbps": n / dt / 1e9, "warm_s": dw,
            "warm_gbps": n / dw / 1e9}  # fmt: skip


# ----------------------------------------------------------------------------- the tools


def _paramgeom() -> list[str]:
    exe = shutil.which("paramgeom")
    return [exe] if exe else [sys.executable, "-m", "paramgeom.cli"]


def _command(tool: str, base: Path, tuned: Path, out: Path) -> list[str]:
    py = sys.executable
    if tool.startswith("paramgeom"):
        extra = {
            "paramgeom_stats": ["--no-spectra"],
            "paramgeom_k64": ["--rank", "64", "--exact-threshold", "0"],
            "paramgeom_default": [],
        }[tool]
        return [*_paramgeom(), "diff", str(base), str(tuned), "--out", str(out), *extra, "--quiet"]
    if tool.startswith("plain_torch"):
        extra = {"plain_torch_stats": ["--no-svd"], "plain_torch": [],
                 "plain_torch_hf": ["--load", "hf"]}[tool]  # fmt: skip
        return [py, str(HERE / "plain_torch.py"), str(base), str(tuned), "--out",
                str(out / "result.json"), *extra]  # fmt: skip
    if tool.startswith("weightwatcher"):
        kind = "dir" if tool == "weightwatcher_dir" else "hf"
        return [py, str(HERE / "ww_runner.py"), str(base), str(tuned), "--out",
                str(out / "result.json"), "--input", kind]  # fmt: skip
    raise ValueError(tool)


def _num(v):
    if v in (None, ""):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return x if math.isfinite(x) else None


def load_rows(tool: str, out: Path) -> dict[str, dict]:
    """Per-tensor figures of one tool, keyed by tensor name, in common column names."""
    rows: dict[str, dict] = {}
    if tool.startswith("paramgeom"):
        with open(out / "tensors.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                rows[r["name"]] = {
                    "numel": int(r["numel"]),
                    "unchanged_rel": _num(r["unchanged_fraction"]),
                    "unchanged_atol": _num(r["unchanged_fraction_atol"]),
                    "stable_rank": _num(r["stable_rank"]),
                    "rank_k": _num(r["rank_k"]),
                    **{k: _num(r[k]) for k in ("angle_left_max", "angle_left_mean",
                                                "angle_right_max", "angle_right_mean")},
                }  # fmt: skip
        return rows
    data = json.loads((out / "result.json").read_text())
    for r in data["rows"]:
        if tool.startswith("weightwatcher"):
            rows[r["tensor"]] = {"stable_rank": r.get("stable_rank"), "alpha": r.get("alpha")}
        else:
            rows[r["name"]] = r
    return rows


def summarize(tool: str, rows: dict[str, dict]) -> dict:
    out: dict = {}
    with_uf = [r for r in rows.values() if r.get("unchanged_rel") is not None]
    if with_uf:
        n = sum(r["numel"] for r in with_uf)
        out["unchanged_rel"] = sum(r["numel"] * r["unchanged_rel"] for r in with_uf) / n
        out["unchanged_atol"] = sum(r["numel"] * r["unchanged_atol"] for r in with_uf) / n
    sr = [r["stable_rank"] for r in rows.values() if r.get("stable_rank") is not None]
    if sr:
        out["stable_rank_mean"] = sum(sr) / len(sr)
        out["n_matrices"] = len(sr)
    return out


# ------------------------------------------------------------------------------ agreement


def sample_names(folder: Path) -> list[str]:
    cfg = json.loads((folder / "config.json").read_text())
    L = cfg["num_hidden_layers"]
    return [
        "model.layers.0.self_attn.k_proj.weight",
        f"model.layers.{L // 2}.self_attn.q_proj.weight",
        f"model.layers.{L - 1}.mlp.down_proj.weight",
    ]


def run_oracle(base: Path, tuned: Path, names: list[str], path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    res: dict = {"model": oracle_mod.model_unchanged(base, tuned), "tensors": {}}
    rb, rt = oracle_mod.Reader(base), oracle_mod.Reader(tuned)
    for name in names:
        w0, w1 = rb.f64(name), rt.f64(name)
        ks = sorted({min(k, *w0.shape) for k in (64, 512)})
        figs = oracle_mod.matrix_figures_multi(w0, w1, ks)
        res["tensors"][name] = {f"k{f['rank_k']}": f for f in figs}
    res["seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(res, indent=1) + "\n")
    return res


def _rel(a, b):
    if a is None or b is None:
        return None
    return abs(a - b) / abs(b) if b else abs(a - b)


def agreement(tables: dict[str, dict], orc: dict) -> dict:
    """Whole-model fractions vs the oracle; per-tensor spreads between tools; the oracle
    sample (stable rank relative error, angle errors in degrees) per tool."""
    out: dict = {"model": {}, "per_tensor": {}, "sample": {}}
    for tool, rows in tables.items():
        s = summarize(tool, rows)
        if "unchanged_rel" in s:
            out["model"][tool] = {
                "unchanged_rel": s["unchanged_rel"],
                "unchanged_atol": s["unchanged_atol"],
                "err_rel": s["unchanged_rel"] - orc["model"]["unchanged_rel"],
                "err_atol": s["unchanged_atol"] - orc["model"]["unchanged_atol"],
            }
    out["model"]["oracle"] = orc["model"]
    # Per-tensor spreads, every tensor: unchanged fractions against paramgeom's (equal to the
    # oracle's on the whole model), stable ranks against WeightWatcher's full float64
    # spectra (else paramgeom_default's exact ones).
    ref_uf = next((t for t in ("paramgeom_stats", "paramgeom_k64", "paramgeom_default")
                   if t in tables), None)  # fmt: skip
    ref_sr = next((t for t in ("weightwatcher", "weightwatcher_dir", "paramgeom_default")
                   if t in tables), None)  # fmt: skip
    for tool, rows in tables.items():
        d_uf, d_sr = [], []
        for name, r in rows.items():
            q = tables[ref_uf].get(name) if ref_uf and tool != ref_uf else None
            if q and r.get("unchanged_rel") is not None and q.get("unchanged_rel") is not None:
                d_uf.append(abs(r["unchanged_rel"] - q["unchanged_rel"]))
            q = tables[ref_sr].get(name) if ref_sr and tool != ref_sr else None
            e = _rel(r.get("stable_rank"), q.get("stable_rank")) if q else None
            if e is not None:
                d_sr.append(e)
        if d_uf or d_sr:
            out["per_tensor"][tool] = {
                "vs_unchanged": ref_uf if d_uf else None,
                "vs_stable_rank": ref_sr if d_sr else None,
                "max_abs_diff_unchanged_rel": max(d_uf) if d_uf else None,
                "max_rel_diff_stable_rank": max(d_sr) if d_sr else None,
                "n_unchanged": len(d_uf),
                "n_stable_rank": len(d_sr),
            }
    for name, by_k in orc["tensors"].items():
        entry: dict = {"oracle": by_k}
        for tool, rows in tables.items():
            r = rows.get(name)
            if r is None:
                continue
            e: dict = {}
            if r.get("stable_rank") is not None:
                ok = by_k.get("k64") or next(iter(by_k.values()))
                e["stable_rank"] = r["stable_rank"]
                e["stable_rank_rel_err"] = _rel(r["stable_rank"], ok["stable_rank"])
            if r.get("unchanged_rel") is not None:
                ok = next(iter(by_k.values()))
                e["unchanged_rel_err"] = r["unchanged_rel"] - ok["unchanged_rel"]
                e["unchanged_atol_err"] = r["unchanged_atol"] - ok["unchanged_atol"]
            k = r.get("rank_k")
            o = by_k.get(f"k{int(k)}") if k else None
            if o is not None and r.get("angle_left_max") is not None:
                e["rank_k"] = int(k)
                for a in ("angle_left_max", "angle_left_mean", "angle_right_max",
                          "angle_right_mean"):  # fmt: skip
                    e[a] = r[a]
                    e[a + "_err"] = r[a] - o[a]
            entry[tool] = e
        out["sample"][name] = entry
    return out


# -------------------------------------------------------------------------------- driver


def ensure_pair(data: Path, nbytes: int, shards: int, log: Path) -> tuple[Path, dict]:
    root = data / f"s{_size_label(nbytes)}"
    info: dict = {"root": str(root)}
    if not (root / "tuned" / "config.json").exists():
        cmd = [*_paramgeom(), "synth", str(root), "--size", str(nbytes), "--shards",
               str(shards), "--quiet"]  # fmt: skip
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
        info["synth_s"] = time.perf_counter() - t0
    cfg = json.loads((root / "base" / "config.json").read_text())
    info["spec"] = {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                        "vocab_size")}  # fmt: skip
    info["bytes_per_checkpoint"] = sum(f.stat().st_size for f in _files(root / "base"))
    info["n_params"] = info["bytes_per_checkpoint"] // 2
    return root, info


def run_trajectory(data: Path, nbytes: int, args) -> dict:
    """``paramgeom trajectory`` on a base + 8 checkpoints of ``nbytes`` each (default K=16,
    warm-started range finder), measured like the diff runs."""
    label = _size_label(nbytes)
    root = data / f"traj{label}"
    logs = data / "logs" / f"traj{label}"
    logs.mkdir(parents=True, exist_ok=True)
    steps = [f"checkpoint-{s}" for s in range(1, 9)]
    if not (root / steps[-1] / "config.json").exists():
        step_list = ",".join(str(s) for s in range(1, 9))
        cmd = [*_paramgeom(), "synth", str(root), "--size", str(nbytes), "--shards",
               str(args.shards), "--steps", step_list, "--quiet"]  # fmt: skip
        with open(logs / "synth.log", "w") as fh:
            subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    folders = [root / "base"] + [root / s for s in steps]
    read = read_rate(folders)
    out = data / "out" / f"traj{label}"
    shutil.rmtree(out, ignore_errors=True)
    load = _wait_quiet(args.quiet_load, args.tool_wait)
    cmd = [*_paramgeom(), "trajectory", *map(str, folders), "--out", str(out), "--quiet"]
    print(f"[{time.strftime('%H:%M:%S')}] trajectory {label} x 8 (load {load:.2f})", flush=True)
    rec = run_measured(cmd, logs / "trajectory.log", args.timeout)
    rec["read"] = read
    rec["bytes_total"] = sum(f.stat().st_size for d in folders for f in _files(d))
    rec["bytes_per_checkpoint"] = sum(f.stat().st_size for f in _files(root / "base"))
    print(f"      wall {rec['wall_s']:.1f} s, peak RSS {rec.get('peak_rss_mb', 0):.0f} MB",
          flush=True)  # fmt: skip
    return rec


def machine_info() -> dict:
    import platform

    import torch

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=REPO).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "python", "csrc"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()  # fmt: skip
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    try:
        import weightwatcher

        wwv = weightwatcher.__version__
    except Exception:  # noqa: BLE001
        wwv = None
    try:
        import transformers

        tfv = transformers.__version__
    except Exception:  # noqa: BLE001
        tfv = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": int(mem) / 2**20,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "weightwatcher": wwv,
        "transformers": tfv,
        "git": sha + (" (python/ or csrc/ modified)" if dirty else ""),
    }


def main(argv: list[str] | None = None) -> int:
    from paramgeom.checkpoints.synth import parse_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["200MB", "1GB", "3GB"])
    p.add_argument("--data", default="/work/data/peers")
    p.add_argument("--tools", nargs="*", default=DEFAULT_TOOLS, choices=list(TOOLS))
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--timeout", type=float, default=900, help="per tool run (s)")
    p.add_argument("--ww-timeout", type=float, default=900, help="WeightWatcher (s)")
    p.add_argument("--skip", nargs="*", default=[], help="TOOL@SIZE pairs not to run")
    p.add_argument("--quiet-load", type=float, default=1.5)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="s to wait for a quiet machine before each size",
    )
    p.add_argument(
        "--tool-wait", type=float, default=20, help="s to wait for a quiet machine before each tool"
    )
    p.add_argument(
        "--trajectory",
        default=None,
        metavar="SIZE",
        help="also time `paramgeom trajectory` on a SIZE synth base + 8 checkpoints "
        "(for benchmarks/projection.md)",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results-md", default=str(HERE / "RESULTS.md"))
    p.add_argument("--plot", default=str(HERE / "scaling.png"))
    args = p.parse_args(argv)

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    results_path = data / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"sizes": {}}
    if not args.report_only:
        results["machine"] = machine_info()
        started = time.time()
        for size_text in args.sizes:
            nbytes = parse_size(size_text)
            label = _size_label(nbytes)
            logs = data / "logs" / label
            logs.mkdir(parents=True, exist_ok=True)
            load = _wait_quiet(args.quiet_load, args.quiet_wait)
            t_size = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] size {label} (load {load:.2f}): synth pair",
                  flush=True)  # fmt: skip
            root, info = ensure_pair(data, nbytes, args.shards, logs / "synth.log")
            base, tuned = root / "base", root / "tuned"
            entry = results["sizes"].setdefault(label, {})
            entry["pair"] = info
            entry["read"] = read_rate([base, tuned])
            print(f"  read: {entry['read']}", flush=True)
            runs = entry.setdefault("runs", {})
            tables: dict[str, dict] = {}
            for tool in args.tools:
                if f"{tool}@{label}" in args.skip or f"{tool}@{size_text}" in args.skip:
                    continue
                out = data / "out" / label / tool
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                load = _wait_quiet(args.quiet_load, args.tool_wait)
                timeout = args.ww_timeout if tool.startswith("weightwatcher") else args.timeout
                print(f"[{time.strftime('%H:%M:%S')}]   {tool} (load {load:.2f})", flush=True)
                rec = run_measured(_command(tool, base, tuned, out), logs / f"{tool}.log",
                                   timeout)  # fmt: skip
                rec["load_at_start_after_wait"] = load
                if rec["rc"] == 0 and not rec["timed_out"]:
                    try:
                        tables[tool] = load_rows(tool, out)
                        rec["summary"] = summarize(tool, tables[tool])
                        res = out / "result.json"
                        if res.exists():
                            extra = json.loads(res.read_text())
                            rec["inner_seconds_load"] = extra.get("seconds_load")
                            rec["inner_seconds_total"] = extra.get("seconds_total")
                        sj = out / "summary.json"
                        if sj.exists():
                            rec["inner_seconds_streaming"] = (
                                json.loads(sj.read_text()).get("run", {}).get("seconds_streaming")
                            )
                    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
                        rec["parse_error"] = repr(exc)
                runs[tool] = rec
                print(f"      wall {rec['wall_s']:.1f} s, peak RSS "
                      f"{rec.get('peak_rss_mb', float('nan')):.0f} MB, rc {rec['rc']}"
                      + (" TIMEOUT" if rec["timed_out"] else ""), flush=True)  # fmt: skip
                results_path.write_text(json.dumps(results, indent=1) + "\n")
            # Tables of tools not rerun this time (kept from earlier runs of this size).
            for tool, rec in runs.items():
                out = data / "out" / label / tool
                if tool not in tables and rec.get("rc") == 0 and not rec.get("timed_out"):
                    with contextlib.suppress(OSError):
                        tables[tool] = load_rows(tool, out)
            print(f"[{time.strftime('%H:%M:%S')}]   oracle", flush=True)
            orc = run_oracle(base, tuned, sample_names(base), data / f"oracle_{label}.json")
            entry["oracle_seconds"] = orc.get("seconds")
            entry["agreement"] = agreement(tables, orc)
            entry["minutes"] = entry.get("minutes", 0.0) + (time.time() - t_size) / 60
            results_path.write_text(json.dumps(results, indent=1) + "\n")
        results["measurement_minutes"] = (
            results.get("measurement_minutes", 0.0) + (time.time() - started) / 60
        )
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    if args.trajectory and not args.report_only:
        results["trajectory"] = run_trajectory(data, parse_size(args.trajectory), args)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    if args.report_only:  # recompute the agreement from the outputs and oracles on disk
        for label, entry in results["sizes"].items():
            orc_path = data / f"oracle_{label}.json"
            if not orc_path.exists():
                continue
            tables = {}
            for tool, rec in entry.get("runs", {}).items():
                if rec.get("rc") == 0 and not rec.get("timed_out"):
                    with contextlib.suppress(OSError):
                        tables[tool] = load_rows(tool, data / "out" / label / tool)
            entry["agreement"] = agreement(tables, json.loads(orc_path.read_text()))
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    write_plot(results, Path(args.plot))
    write_markdown(results, Path(args.results_md), Path(args.plot))
    print(f"wrote {args.results_md} and {args.plot}")
    return 0


# ---------------------------------------------------------------------------------- report


def _sorted_sizes(results: dict) -> list[str]:
    sizes = results["sizes"]
    return sorted(sizes, key=lambda s: sizes[s]["pair"]["bytes_per_checkpoint"])


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = _sorted_sizes(results)
    if not sizes:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    tools = [t for t in TOOLS if any(t in results["sizes"][s].get("runs", {}) for s in sizes)]
    for tool in tools:
        xs, ts, ms, tx, tt = [], [], [], [], []
        for s in sizes:
            rec = results["sizes"][s].get("runs", {}).get(tool)
            if rec is None:
                continue
            gb = results["sizes"][s]["pair"]["bytes_per_checkpoint"] / 1e9
            if rec.get("timed_out"):
                tx.append(gb)
                tt.append(rec["timeout_s"])
                continue
            if rec.get("rc") != 0:
                continue
            xs.append(gb)
            ts.append(rec["wall_s"])
            ms.append(rec.get("peak_rss_mb", rec["peak_rss_sampled_mb"]) / 1024)
        style = "-" if tool.startswith("paramgeom") else "--"
        (line,) = axes[0].plot(xs, ts, style, marker="o", label=tool)
        if tx:
            axes[0].plot(tx, tt, linestyle="none", marker="^", color=line.get_color(),
                         label=f"{tool} (> timeout)")  # fmt: skip
        axes[1].plot(xs, ms, style, marker="o", color=line.get_color(), label=tool)
    for ax, title, ylabel in (
        (axes[0], "wall time", "seconds"),
        (axes[1], "peak RSS (/usr/bin/time %M)", "GiB"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("checkpoint size (GB of bf16, one side of the pair)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"paramgeom vs peers on synth pairs, {results['machine']['cores']}-core CPU "
                 f"({results['machine']['date']})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def write_markdown(results: dict, path: Path, plot: Path) -> None:
    m = results["machine"]
    sizes = _sorted_sizes(results)
    L: list[str] = []
    add = L.append
    add("# Peer comparison: paramgeom diff vs WeightWatcher vs the plain-torch script\n")
    add(f"Generated by `benchmarks/peers/run.py` (commands in the notes at the end; last "
        f"run {m['date']}): {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB, torch "
        f"{m['torch']} ({m['torch_threads']} threads), WeightWatcher {m['weightwatcher']}, "
        f"transformers {m['transformers']}, git {m['git']}. Machine time: "
        + ", ".join(f"{s} {_f(results['sizes'][s].get('minutes'))} min" for s in sizes)
        + (f", trajectory {results['trajectory']['wall_s'] / 60:.1f} min"
           if results.get("trajectory") else "")
        + " (each including its synth pair, reads and oracle). Data under /work/data/peers "
        "(not in the repository).\n")  # fmt: skip
    add(
        "**Inputs**: `paramgeom synth --size S --shards 4` pairs only (bf16, Llama-shaped, "
        "rank-4 update of relative size 1e-2 on every matrix, Gaussian base weights). No "
        "pairs written by our training drivers are compared (the drivers were not there when "
        "this comparison was planned; their first part landed during the session). Every "
        "tool runs as its own process, one at a time, from a warm page cache (the pair is "
        "read once first, which also measures the storage rate), with all (2) cores.\n"
    )
    add("| size | hidden | layers | intermediate | vocab | parameters | bytes per checkpoint |")
    add("|---|---|---|---|---|---|---|")
    for s in sizes:
        pr = results["sizes"][s]["pair"]
        sp = pr["spec"]
        add(f"| {s} | {sp['hidden_size']} | {sp['num_hidden_layers']} | "
            f"{sp['intermediate_size']} | {sp['vocab_size']} | {pr['n_params'] / 1e9:.3f} B | "
            f"{pr['bytes_per_checkpoint'] / 1e9:.3f} GB |")  # fmt: skip
    add("")
    add("**What each tool computes** (the rows of the table):\n")
    for tool, (_, desc) in TOOLS.items():
        if any(tool in results["sizes"][s].get("runs", {}) for s in sizes):
            add(f"- `{tool}`: {desc}.")
    add("")
    add("## Wall time and peak memory\n")
    add(
        'Wall and peak RSS from `/usr/bin/time -f "%e %M"` (RSS includes file-backed pages '
        "a process maps; the anon column is the sampled peak of anonymous memory alone). "
        "`load` is the 1-minute load average when the tool started; `others` the average "
        "number of cores other processes used during the run (from /proc/stat minus the "
        "tool's own CPU time): the machine was shared, so read ratios within a size.\n"
    )
    add(
        "| size (1 side) | params | tool | wall s | peak RSS MB | peak anon MB | CPU s | "
        "load | others (cores) | s/GB of pair |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|")
    for s in sizes:
        e = results["sizes"][s]
        gb = e["pair"]["bytes_per_checkpoint"] / 1e9
        for tool, rec in e.get("runs", {}).items():
            if rec.get("timed_out"):
                wall = f"> {rec['timeout_s']:.0f} (timeout)"
            elif rec.get("rc") != 0:
                wall = f"failed (rc {rec['rc']})"
            else:
                wall = _f(rec["wall_s"])
            ok = rec.get("rc") == 0 and not rec.get("timed_out")
            add(f"| {s} ({gb:.2f} GB) | {e['pair']['n_params'] / 1e9:.3f} B | `{tool}` | {wall} | "
                f"{_f(rec.get('peak_rss_mb'), '{:.0f}')} | "
                f"{_f(rec.get('peak_rss_anon_mb'), '{:.0f}')} | {_f(rec.get('cpu_s'))} | "
                f"{_f(rec.get('load_before'), '{:.2f}')} | {_f(rec.get('others_cores'), '{:.2f}')}"
                f" | {_f(rec['wall_s'] / (2 * gb) if ok else None, '{:.2f}')} |")  # fmt: skip
    add("")
    add(f"![time and memory vs size]({plot.name})\n")
    # Speed-ups of paramgeom over each peer, per size (> 1: paramgeom faster).
    pairs = (
        ("paramgeom_stats", "plain_torch_stats"),
        ("paramgeom_stats", "plain_torch"),
        ("paramgeom_k64", "plain_torch"),
        ("paramgeom_k64", "weightwatcher"),
        ("paramgeom_default", "plain_torch"),
        ("paramgeom_default", "weightwatcher"),
    )

    def wall(size, t):
        r = results["sizes"][size].get("runs", {}).get(t)
        if r is None or r.get("rc") != 0 or r.get("timed_out"):
            return None
        return r["wall_s"]

    add("### Speed-up of paramgeom over each peer (peer wall / paramgeom wall)\n")
    add("| size | " + " | ".join(f"`{a}` vs `{b}`" for a, b in pairs) + " |")
    add("|---" * (len(pairs) + 1) + "|")
    for s in sizes:
        cells = []
        for a, b in pairs:
            wa, wb = wall(s, a), wall(s, b)
            cells.append(f"{wb / wa:.2f}x" if wa and wb else "-")
        add(f"| {s} | " + " | ".join(cells) + " |")
    add("")
    big = sizes[-1]
    peers = {t: wall(big, t) for t in results["sizes"][big].get("runs", {})
             if not t.startswith("paramgeom")}  # fmt: skip
    peers_ok = {t: w for t, w in peers.items() if w is not None}
    if peers_ok and wall(big, "paramgeom_stats"):
        fastest = min(peers_ok, key=peers_ok.get)
        sp = peers_ok[fastest] / wall(big, "paramgeom_stats")
        add(f"At the largest size ({big}) the fastest peer is `{fastest}` "
            f"({peers_ok[fastest]:.1f} s); `paramgeom_stats` is {sp:.2f}x faster: the >= 10x "
            f"target is **{'met' if sp >= 10 else 'not met'}** for the scan.")  # fmt: skip
    for t, w in peers.items():
        r = results["sizes"][big]["runs"][t]
        if w is None and r.get("timed_out"):
            add(f"`{t}` did not finish within {r['timeout_s']:.0f} s at {big}.")
    add("")
    add("## Agreement\n")
    add(
        "Float64 oracle (`benchmarks/peers/oracle.py`, NumPy/LAPACK on the stored bf16 values): "
        "whole-model unchanged fractions over every tensor, and, on a sample of three "
        "matrices per size (layer 0 k_proj, middle q_proj, last down_proj), dW's full "
        "spectrum (stable rank) and the top-k subspaces of W0 and W1 from full SVDs with "
        "`scipy.linalg.subspace_angles` (k = 64, and 512 for paramgeom's default).\n"
    )
    add("### Whole-model unchanged fraction\n")
    add("| size | tool | 1e-3 rule | error vs oracle | atol 1e-5 | error vs oracle |")
    add("|---|---|---|---|---|---|")
    for s in sizes:
        ag = results["sizes"][s].get("agreement", {})
        mo = ag.get("model", {})
        o = mo.get("oracle")
        if o:
            add(
                f"| {s} | **oracle (float64)** | {o['unchanged_rel']:.6f} | | "
                f"{o['unchanged_atol']:.6f} | |"
            )
        for tool, r in mo.items():
            if tool == "oracle":
                continue
            add(
                f"| {s} | `{tool}` | {r['unchanged_rel']:.6f} | {r['err_rel']:+.1e} | "
                f"{r['unchanged_atol']:.6f} | {r['err_atol']:+.1e} |"
            )
    add("")
    add("### Per tensor, every tensor, between tools\n")
    add(
        "Unchanged fractions against `paramgeom_stats`'s (which equal the oracle's on the "
        "whole model), stable ranks against WeightWatcher's (full float64 SVD of every dW, "
        "which equal the oracle's on the sample).\n"
    )
    add(
        "| size | tool | max abs diff unchanged (1e-3 rule) (tensors) | "
        "max rel diff stable rank (matrices) |"
    )
    add("|---|---|---|---|")
    for s in sizes:
        for tool, r in results["sizes"][s].get("agreement", {}).get("per_tensor", {}).items():
            uf = r.get("max_abs_diff_unchanged_rel")
            sr = r.get("max_rel_diff_stable_rank")
            uf_s = f"{uf:.1e} ({r['n_unchanged']})" if uf is not None else "-"
            sr_s = f"{sr:.1e} ({r['n_stable_rank']})" if sr is not None else "-"
            add(f"| {s} | `{tool}` | {uf_s} | {sr_s} |")
    add("")
    add("### Oracle sample: stable rank and principal angles\n")
    add(
        "Angles in degrees (max over the k principal angles / mean); `gap` = "
        "sigma_k / sigma_{k+1} of W0: near 1 the top-k subspace is barely defined (Gaussian "
        "synth weights have no spectral gap), which is what makes the angle a hard test.\n"
    )
    add(
        "| size | tensor | tool | k | stable rank (rel err) | left max / mean | "
        "right max / mean | angle error (left max, right max) |"
    )
    add("|---|---|---|---|---|---|---|---|")
    for s in sizes:
        for name, entry in results["sizes"][s].get("agreement", {}).get("sample", {}).items():
            short = name.replace("model.layers.", "L").replace(".weight", "")
            for o in entry["oracle"].values():
                gap = o.get("gap_w0")
                add(
                    f"| {s} | {short} | **oracle** (gap {_f(gap, '{:.3f}')}) | {o['rank_k']} | "
                    f"{o['stable_rank']:.4f} | {o['angle_left_max']:.2f} / "
                    f"{o['angle_left_mean']:.2f} | {o['angle_right_max']:.2f} / "
                    f"{o['angle_right_mean']:.2f} | |"
                )
            for tool, e in entry.items():
                if tool == "oracle" or "stable_rank" not in e:
                    continue
                sr = f"{e['stable_rank']:.4f} ({e['stable_rank_rel_err']:.1e})"
                if "rank_k" in e:
                    ang = (
                        f"{e['angle_left_max']:.2f} / {e['angle_left_mean']:.2f} | "
                        f"{e['angle_right_max']:.2f} / {e['angle_right_mean']:.2f} | "
                        f"{e['angle_left_max_err']:+.2f}, {e['angle_right_max_err']:+.2f}"
                    )
                else:
                    ang = "- | - | -"
                add(f"| {s} | {short} | `{tool}` | {e.get('rank_k', '-')} | {sr} | {ang} |")
    add("")
    tr = results.get("trajectory")
    if tr:
        add("## `paramgeom trajectory` (for benchmarks/projection.md)\n")
        add(f"Base + 8 synth checkpoints of {tr['bytes_per_checkpoint'] / 1e9:.2f} GB "
            f"({tr['bytes_total'] / 1e9:.2f} GB read), defaults (K = 16, warm-started range "
            f"finder): wall {_f(tr.get('wall_s'))} s, peak RSS "
            f"{_f(tr.get('peak_rss_mb'), '{:.0f}')} MB, CPU {_f(tr.get('cpu_s'))} s, "
            f"load {_f(tr.get('load_before'), '{:.2f}')}, "
            f"others {_f(tr.get('others_cores'), '{:.2f}')} cores; "
            f"{tr['wall_s'] / (tr['bytes_total'] / 1e9):.2f} s per GB read.\n")  # fmt: skip
    add("## Storage and page-cache read rates (this VM)\n")
    add("| size | pair bytes | cold read GB/s | warm (page cache) read GB/s |")
    add("|---|---|---|---|")
    for s in sizes:
        r = results["sizes"][s].get("read")
        if r:
            add(
                f"| {s} | {r['bytes'] / 1e9:.2f} GB | {r['cold_gbps']:.2f} | {r['warm_gbps']:.2f} |"
            )
    add("")
    text = "\n".join(L) + "\n"
    old = path.read_text() if path.exists() else ""
    if HAND_MARK in old:
        text += "\n" + HAND_MARK + old.split(HAND_MARK, 1)[1]
    else:
        text += "\n" + HAND_MARK + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
