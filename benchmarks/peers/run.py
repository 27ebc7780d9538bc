"""Peer comparison: paramgeom diff vs WeightWatcher vs the plain-torch script, by model size.

For each size: writes the ``paramgeom synth`` pair if missing (``DATA/s<size>/base|tuned``),
measures the storage read rate of the pair (evicted from the page cache first, so the
tools then all start from a warm cache), runs every tool as a separate process under
``/usr/bin/time -f "%e %M %U %S"`` (wall, peak RSS, CPU; a sampler also records the peak
anonymous and file-backed RSS from /proc), computes the float64 oracle on the whole-model
unchanged fractions and on a sample of matrices, checks agreement, and writes
``DATA/results.json``, ``benchmarks/peers/RESULTS.md`` and ``benchmarks/peers/scaling.png``.

Rerun everything (about 25 min on the 2-core VM), in an environment with paramgeom,
weightwatcher and transformers installed; DATA is any folder outside the repository::

    python benchmarks/peers/run.py --data DATA --sizes 200MB 1GB 3GB

``--pair LABEL=BASE,TUNED`` (repeatable) runs the same tools, oracle and agreement checks
on an existing checkpoint pair instead of a synth one (no synth step) and stores it under
``results["pairs"][LABEL]``, apart from the synth sizes (``DATA/out/pair-LABEL``,
``DATA/oracle_pair-LABEL.json``); ``--sizes`` with no values runs no synth size. The pairs
written by our own drivers (``paramgeom reproduce --quick``: tiny Llama, 0.86M parameters,
checkpoint-0 = the base, checkpoint-300 = after 300 steps at lr 3e-6), about 2 min on a
quiet machine::

    R=OUT/runs/tiny    # OUT: the --out folder of `paramgeom reproduce --quick`
    python benchmarks/peers/run.py --data DATA --sizes \
        --pair opd=$R/opd-s0/checkpoint-0,$R/opd-s0/checkpoint-300 \
        --pair sft=$R/sft-s0/checkpoint-0,$R/sft-s0/checkpoint-300 \
        --pair rlvr=$R/rlvr-s0/checkpoint-0,$R/rlvr-s0/checkpoint-300

(the recorded run added ``--quiet-load 3 --quiet-wait 120 --tool-wait 30``: the VM's load
average sat near 2 while its CPUs were idle; the ``others`` column checks the real thing).

``--report-only`` rewrites RESULTS.md and the plot from ``DATA/results.json`` (synth sizes
and pairs). Generated data stay under ``--data`` (required, no default), never in the
repository. Every tool gets a fresh output folder per run (paramgeom's journal would
otherwise resume).

This file holds the tools (their commands and per-tensor outputs), the float64 oracle and
the agreement checks, the synth pairs and the command line; measuring a process and the
machine is in ``measure.py``, writing RESULTS.md and the plot in ``report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The siblings (oracle, measure, report) import by name whether this file runs as a script
# or is loaded from elsewhere with importlib.
sys.path.insert(0, str(HERE))

import oracle as oracle_mod  # noqa: E402
from measure import _files, _wait_quiet, machine_info, read_rate, run_measured  # noqa: E402
from report import write_markdown, write_plot  # noqa: E402

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
    "paramgeom_spectra": (
        "paramgeom",
        "`paramgeom diff --no-angles`: statistics + dW's exact spectrum (stable rank, float64 "
        "Gram eigenvalues when min(m,n) <= 4096) and norms; no subspaces: the figures "
        "WeightWatcher's delta analysis computes",
    ),
    "plain_torch": (
        "plain torch",
        "plain-torch script: the above + `svd_lowrank(q=64)` of dW (stable rank), of W0 and "
        "of W1 (top-64 subspaces) + cosine-form principal angles, per 2-D tensor",
    ),
    "plain_torch_exact": (
        "plain torch",
        "plain-torch script `--svd full`, the equal-accuracy baseline: as `plain_torch` but "
        "`torch.linalg.svdvals(dW)` and full `torch.linalg.svd` of W0 and W1 (float32) in "
        "place of `svd_lowrank`, per 2-D tensor",
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
# The peer packages a tool imports (none is a paramgeom dependency) and how to get them;
# WeightWatcher's HF input and plain_torch_hf build transformers models.
TOOL_NEEDS: dict[str, tuple[str, ...]] = {
    "weightwatcher": ("weightwatcher", "transformers"),
    "weightwatcher_dir": ("weightwatcher",),
    "plain_torch_hf": ("transformers",),
}
PIP_NAME = {"weightwatcher": "weightwatcher==0.7.7", "transformers": "transformers"}
DEFAULT_TOOLS = [
    "paramgeom_stats",
    "plain_torch_stats",
    "paramgeom_k64",
    "plain_torch",
    "paramgeom_default",
    "plain_torch_exact",
    "paramgeom_spectra",
    "weightwatcher",
]


# ---------------------------------------------------------------------------------- helpers


def _size_label(nbytes: int) -> str:
    return f"{nbytes / 1e9:g}GB" if nbytes >= 1e9 else f"{nbytes / 1e6:g}MB"


def _headers(folder: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (dtype, shape) from the safetensors headers of a folder."""
    out: dict[str, tuple[str, list[int]]] = {}
    for f in _files(folder):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, v in header.items():
            if name != "__metadata__":
                out[name] = (v["dtype"], list(v["shape"]))
    return out


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
            "paramgeom_spectra": ["--no-angles"],
        }[tool]
        return [*_paramgeom(), "diff", str(base), str(tuned), "--out", str(out), *extra, "--quiet"]
    if tool.startswith("plain_torch"):
        extra = {"plain_torch_stats": ["--no-svd"], "plain_torch": [],
                 "plain_torch_exact": ["--svd", "full"],
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
            rows[r["tensor"]] = {k: r.get(k) for k in ("stable_rank", "alpha", "warning")}
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
    if tool.startswith("weightwatcher"):  # its power-law fits and the warnings it attaches
        al = [r["alpha"] for r in rows.values() if r.get("alpha") is not None]
        ok = [a for a in al if a > 0]  # WeightWatcher reports -1 for a failed fit
        out["alpha_min"], out["alpha_max"] = (min(ok), max(ok)) if ok else (None, None)
        out["alpha_failed"] = len(al) - len(ok)
        warnings: dict[str, int] = {}
        for r in rows.values():
            if r.get("warning"):
                warnings[r["warning"]] = warnings.get(r["warning"], 0) + 1
        out["warnings"] = warnings
    return out


# ------------------------------------------------------------------------------ agreement


def sample_names(folder: Path) -> list[str]:
    """Layer 0 k_proj, middle q_proj, last down_proj (else the first three matrices)."""
    cfg = json.loads((folder / "config.json").read_text())
    L = cfg["num_hidden_layers"]
    names = [
        "model.layers.0.self_attn.k_proj.weight",
        f"model.layers.{L // 2}.self_attn.q_proj.weight",
        f"model.layers.{L - 1}.mlp.down_proj.weight",
    ]
    present = _headers(folder)
    if all(n in present for n in names):
        return names
    return [n for n, (_, shape) in present.items() if len(shape) == 2][:3]


def run_oracle(base: Path, tuned: Path, names: list[str], path: Path) -> dict:
    """Float64 oracle of a pair, cached in ``path`` (recomputed when the pair differs)."""
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("base", str(base)) == str(base) and cached.get("tuned", str(tuned)) == str(
            tuned
        ):
            return cached
    import numpy as np

    t0 = time.perf_counter()
    res: dict = {"base": str(base), "tuned": str(tuned),
                 "model": oracle_mod.model_unchanged(base, tuned), "tensors": {}}  # fmt: skip
    rb, rt = oracle_mod.Reader(base), oracle_mod.Reader(tuned)
    for name in names:
        w0, w1 = rb.f64(name), rt.f64(name)
        ks = sorted({min(k, *w0.shape) for k in (64, 512)})
        figs = oracle_mod.matrix_figures_multi(w0, w1, ks)
        # dW's leading singular values: sigma_1 / sigma_2 says how well separated the top
        # direction (the stable rank's denominator) is.
        sd = np.linalg.svd(w1 - w0, compute_uv=False)
        for f in figs:
            f["sigma_delta_top"] = [float(x) for x in sd[:8]]
            f["gap_delta"] = float(sd[0] / sd[1]) if len(sd) > 1 and sd[1] > 0 else None
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
            if r.get("alpha") is not None:  # WeightWatcher's power-law exponent of dW
                e["alpha"] = r["alpha"]
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


def parse_pair(text: str) -> tuple[str, Path, Path]:
    """``LABEL=BASE,TUNED`` -> (label, base folder, tuned folder)."""
    label, sep, rest = text.partition("=")
    base, sep2, tuned = rest.partition(",")
    if not (sep and sep2 and label and base and tuned) or "/" in label:
        raise argparse.ArgumentTypeError(f"--pair wants LABEL=BASE,TUNED, got {text!r}")
    for folder in (base, tuned):
        if not _files(Path(folder)) or not (Path(folder) / "config.json").exists():
            raise argparse.ArgumentTypeError(f"{folder}: no *.safetensors + config.json")
    return label, Path(base).resolve(), Path(tuned).resolve()


def _sha256(folder: Path) -> str:
    """Digest of a checkpoint's safetensors files (to tell pairs that share a base)."""
    import hashlib

    h = hashlib.sha256()
    for f in _files(folder):
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
    return h.hexdigest()


SPEC_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


def pair_info(base: Path, tuned: Path) -> dict:
    """Shape, size and provenance (paramgeom driver metadata, if any) of a given pair."""
    cfg = json.loads((base / "config.json").read_text())
    heads = _headers(base)
    info: dict = {
        "base": str(base),
        "tuned": str(tuned),
        "spec": {k: cfg.get(k) for k in SPEC_KEYS},
        "bytes_per_checkpoint": sum(f.stat().st_size for f in _files(base)),
        "n_params": sum(math.prod(shape) for _, shape in heads.values()),
        "dtypes": sorted({d for d, _ in heads.values()}),
        "n_tensors": len(heads),
        "base_sha256": _sha256(base),
    }
    for side, folder in (("base", base), ("tuned", tuned)):
        with contextlib.suppress(OSError, ValueError):
            info[f"{side}_meta"] = json.loads((folder / "paramgeom_checkpoint.json").read_text())
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        conf = json.loads((tuned.parent / "run.json").read_text())["config"]
        info["run"] = {k: conf.get(k) for k in ("lr", "steps", "schedule", "model_size")}
    return info


def _tables_on_disk(runs: dict, out_root: Path, skip: set[str] = frozenset()) -> dict:
    tables = {}
    for tool, rec in runs.items():
        if tool not in skip and rec.get("rc") == 0 and not rec.get("timed_out"):
            with contextlib.suppress(OSError):
                tables[tool] = load_rows(tool, out_root / tool)
    return tables


def measure(entry: dict, base: Path, tuned: Path, key: str, skip_keys: list[str], args,
            data: Path, save, t_start: float) -> None:  # fmt: skip
    """Read rate, every tool of ``args.tools`` (one process each), the float64 oracle and
    the agreement checks for one pair; fills ``entry`` (``runs``, ``agreement``, ...).
    Outputs go to ``DATA/out/KEY/TOOL``, logs to ``DATA/logs/KEY``."""
    logs = data / "logs" / key
    logs.mkdir(parents=True, exist_ok=True)
    entry["read"] = read_rate([base, tuned])
    print(f"  read: {entry['read']}", flush=True)
    runs = entry.setdefault("runs", {})
    tables: dict[str, dict] = {}
    for tool in args.tools:
        if any(f"{tool}@{k}" in args.skip for k in skip_keys):
            continue
        out = data / "out" / key / tool
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        load = _wait_quiet(args.quiet_load, args.tool_wait)
        timeout = args.ww_timeout if tool.startswith("weightwatcher") else args.timeout
        print(f"[{time.strftime('%H:%M:%S')}]   {tool} (load {load:.2f})", flush=True)
        rec = run_measured(_command(tool, base, tuned, out), logs / f"{tool}.log", timeout)
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
        save()
    # Tables of tools not rerun this time (kept from earlier runs of this pair).
    tables.update(_tables_on_disk(runs, data / "out" / key, skip=set(tables)))
    print(f"[{time.strftime('%H:%M:%S')}]   oracle", flush=True)
    orc = run_oracle(base, tuned, sample_names(base), data / f"oracle_{key}.json")
    entry["oracle_seconds"] = orc.get("seconds")
    entry["agreement"] = agreement(tables, orc)
    entry["minutes"] = entry.get("minutes", 0.0) + (time.time() - t_start) / 60
    save()


def main(argv: list[str] | None = None) -> int:
    from paramgeom.checkpoints.synth import parse_size

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="*", default=["200MB", "1GB", "3GB"],
                   help="synth sizes (none: `--sizes` with no value)")  # fmt: skip
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        type=parse_pair,
        metavar="LABEL=BASE,TUNED",
        help="also compare an existing checkpoint pair (repeatable); stored under "
        "results['pairs'][LABEL]",
    )
    p.add_argument(
        "--data",
        required=True,
        help="folder for the pairs, tool outputs, logs, oracles and results.json (required, "
        "no default; keep it outside the repository)",
    )
    p.add_argument("--tools", nargs="*", default=DEFAULT_TOOLS, choices=list(TOOLS))
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--timeout", type=float, default=900, help="per tool run (s)")
    p.add_argument("--ww-timeout", type=float, default=900, help="WeightWatcher (s)")
    p.add_argument("--skip", nargs="*", default=[], help="TOOL@SIZE or TOOL@LABEL not to run")
    p.add_argument("--quiet-load", type=float, default=1.5)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="s to wait for a quiet machine before each size or pair",
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

    # A peer that cannot even import would only show up as a failed row minutes later.
    for tool in [] if args.report_only else args.tools:
        for mod in TOOL_NEEDS.get(tool, ()):
            if importlib.util.find_spec(mod) is None:
                raise SystemExit(f"run.py: {tool} needs {mod}, which is not installed "
                                 f"(pip install {PIP_NAME[mod]}), or leave it out")  # fmt: skip
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    results_path = data / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"sizes": {}}
    results.setdefault("sizes", {})
    results["data"] = str(data)

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1) + "\n")

    if not args.report_only:
        machine = machine_info()
        if args.sizes or args.trajectory:  # the synth header's machine line
            results["machine"] = machine
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
            entry = results["sizes"].setdefault(label, {})
            entry["pair"] = info
            measure(entry, root / "base", root / "tuned", label, [label, size_text], args,
                    data, save, t_size)  # fmt: skip
        if args.sizes:
            results["measurement_minutes"] = (
                results.get("measurement_minutes", 0.0) + (time.time() - started) / 60
            )
            save()
        for label, base, tuned in args.pair:
            load = _wait_quiet(args.quiet_load, args.quiet_wait)
            t_pair = time.time()
            print(f"[{time.strftime('%H:%M:%S')}] pair {label} (load {load:.2f}): "
                  f"{base} -> {tuned}", flush=True)  # fmt: skip
            pairs = results.setdefault("pairs", {})
            info = pair_info(base, tuned)
            entry = pairs.get(label, {})
            if (entry.get("pair", {}).get("base"), entry.get("pair", {}).get("tuned")) != (
                info["base"],
                info["tuned"],
            ):
                entry = {}  # another pair under this label: nothing of the old one is kept
            pairs[label] = entry
            entry["pair"] = info
            entry["machine"] = machine
            measure(entry, base, tuned, f"pair-{label}", [label, f"pair-{label}"], args, data,
                    save, t_pair)  # fmt: skip
    if args.trajectory and not args.report_only:
        results["trajectory"] = run_trajectory(data, parse_size(args.trajectory), args)
        save()
    if args.report_only:  # recompute the agreement from the outputs and oracles on disk
        keyed = [(label, entry) for label, entry in results["sizes"].items()]
        keyed += [(f"pair-{label}", entry) for label, entry in results.get("pairs", {}).items()]
        for pr in (e["pair"] for e in results.get("pairs", {}).values()):
            if "base_sha256" not in pr and Path(pr["base"]).is_dir():  # older results
                pr["base_sha256"] = _sha256(Path(pr["base"]))
        for key, entry in keyed:
            orc_path = data / f"oracle_{key}.json"
            if not orc_path.exists():
                continue
            tables = _tables_on_disk(entry.get("runs", {}), data / "out" / key)
            for tool, rows in tables.items():
                entry["runs"][tool]["summary"] = summarize(tool, rows)
            entry["agreement"] = agreement(tables, json.loads(orc_path.read_text()))
        save()
    write_plot(results, Path(args.plot), TOOLS)
    write_markdown(results, Path(args.results_md), Path(args.plot), TOOLS)
    print(f"wrote {args.results_md} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
