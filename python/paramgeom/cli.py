"""The ``paramgeom`` command line.

Exit status: 0 on success, 2 on bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from paramgeom._argtypes import bounded_float, bounded_int

# SciPy's LAPACK (the subset eigensolvers of the exact spectra) runs on OpenBLAS, torch's
# products on MKL/OpenMP: two thread pools whose idle workers spin on the same cores. With
# both at the core count a 200 MB diff took 50.0 s on the 2-core VM, with OpenBLAS on one
# thread 42.3 s; under load (another process busy) 862 s against 42 s, as spinning workers
# starved the descheduled ones. Set before NumPy or SciPy loads (it is read once, then);
# a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if TYPE_CHECKING:
    from rich.console import Console


def _cmd_backends(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from paramgeom import backends

    infos = backends()
    if args.json:
        print(json.dumps({name: asdict(info) for name, info in infos.items()}, indent=2))
        return 0
    table = Table(title="paramgeom backends (auto order: cuda > cupy > triton | cpu > torch)")
    table.add_column("backend")
    table.add_column("usable")
    table.add_column("tensors")
    table.add_column("details / why not")
    for info in infos.values():
        table.add_row(
            info.name,
            "[green]yes[/]" if info.available else "[red]no[/]",
            ", ".join(info.devices),
            info.reason,
        )
    Console().print(table)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from paramgeom import bench

    console = Console(stderr=True, quiet=args.quiet)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("paramgeom bench", total=None)

        def say(msg: str) -> None:
            progress.update(task, description=f"paramgeom bench: {msg}")

        try:
            result = bench.run(
                Path(args.out), quick=args.quick, device=args.device, progress=say,
                smoke=args.smoke,
            )  # fmt: skip
        except bench.WrongAnswerError as exc:
            print(f"paramgeom bench: {exc}", file=sys.stderr)
            return 1
    if not args.quiet:
        print((Path(args.out) / "bench.md").read_text())
    lim = result["limits"]
    console.print(
        f"wrote {args.out}/bench.json and bench.md (copy {lim['copy_gbps']:.1f} GB/s, "
        f"GEMM {lim['gemm_tflops']:.2f} TFLOP/s, FMA {lim['fma_tflops']:.2f} TFLOP/s)"
    )
    return 0


def _console(args) -> Console:
    from rich.console import Console

    return Console(stderr=True, quiet=getattr(args, "quiet", False))


def _cmd_diff(args: argparse.Namespace) -> int:
    from paramgeom.engine.compute import DiffOptions
    from paramgeom.engine.diff import run_diff, run_diffs

    opts = DiffOptions(
        rel_tol=args.rel_tol,
        atol=args.atol,
        rank=args.rank,
        angles=not args.no_angles and not args.no_spectra,
        spectra=not args.no_spectra,
        exact_threshold=args.exact_threshold,
        chunk_bytes=args.chunk_bytes,
        backend=args.backend,
        device=args.device,
        masks=args.masks,
    )
    if len(args.tuned) > 1:
        say = None if args.quiet else _console(args).print
        summaries = run_diffs(
            args.base, args.tuned, args.out, opts, base_cache=args.base_cache,
            use_cache=not args.no_base_cache, strict=args.strict, quiet=args.quiet, say=say,
            workers=args.workers,
        )  # fmt: skip
        if summaries and summaries[0] is not None and not args.quiet:
            _console(args).print(
                "; ".join(
                    f"{t}: {s['run']['seconds_streaming']:.1f} s" for t, s in
                    zip(args.tuned, summaries, strict=True)
                )
                + f"; wrote {args.out}/runs.json and one folder per checkpoint"
            )  # fmt: skip
        return 0
    cache = None if args.no_base_cache else args.base_cache
    summary = run_diff(
        args.base, args.tuned[0], args.out, opts, strict=args.strict, quiet=args.quiet,
        base_cache=cache, workers=args.workers,
    )  # fmt: skip
    if summary is not None and not args.quiet:
        run = summary.get("run", {})
        secs, nbytes = run.get("seconds_streaming", 0.0), run.get("bytes_computed", 0)
        _console(args).print(
            f"streamed {nbytes / 1e9:.2f} GB in {secs:.2f} s"
            + (f" ({nbytes / secs / 1e9:.2f} GB/s)" if secs > 0 and nbytes else "")
            + f"; {run.get('units_from_journal', 0)} unit(s) reused from the journal"
        )
        model = summary["model"]
        uf = model.get("unchanged_fraction")
        rc = model.get("relative_change")
        _console(args).print(
            f"{model.get('n_tensors')} tensors, {model.get('numel'):,} parameters: unchanged "
            f"{100 * uf:.2f}% (bf16, eta={args.rel_tol:g}), ||dW||/||W0|| = "
            f"{rc if rc is None else f'{rc:.3g}'}; wrote {args.out}/tensors.parquet, "
            "tensors.csv, summary.json, report.md, report.html"
            if uf is not None
            else f"wrote {args.out}"
        )
    return 0


def _cmd_trajectory(args: argparse.Namespace) -> int:
    from paramgeom.engine.trajectory import TrajectoryOptions, run_trajectory

    opts = TrajectoryOptions(
        k=args.k,
        sketch_rank=args.sketch_rank,
        lock_threshold=args.lock_threshold,
        rel_tol=args.rel_tol,
        backend=args.backend,
        device=args.device,
    )
    summary = run_trajectory(
        args.base, args.checkpoints, args.out, opts, quiet=args.quiet, workers=args.workers
    )
    if summary is not None and not args.quiet:
        lock = summary.get("lock") or {}
        step = lock.get("lock_step")
        _console(args).print(
            f"lock step: {step if step is not None else 'none'}"
            + (f" ({100 * lock['lock_fraction']:.0f}% of training)" if step is not None else "")
            + f"; wrote {args.out}/trajectory.parquet, summary.json, report.md"
        )
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from paramgeom.reproduce import run_reproduce
    from paramgeom.reproduce.runner import JobsFailedError

    profile = "smoke" if args.smoke else ("quick" if args.quick else "full")
    try:
        summary = run_reproduce(args.out, profile, jobs=args.jobs, threads=args.threads,
                                device=args.device, quiet=args.quiet)  # fmt: skip
    except JobsFailedError as exc:
        print(f"paramgeom reproduce: error: {exc}; finished jobs are kept, rerun the same "
              "command to resume", file=sys.stderr)  # fmt: skip
        return 1
    if not args.quiet:
        agree = sum(1 for r in summary["key_results"] if r["agrees"])
        total = sum(1 for r in summary["key_results"] if r["agrees"] is not None)
        _console(args).print(
            f"{agree}/{total} rows of the paper's Key Results agree; "
            f"wall {summary['wall_s']:.0f} s; wrote {args.out}/report.md, report.html, "
            "summary.json, commands.sh"
        )
    return 0


_BACKENDS = ["auto", "cuda", "cupy", "triton", "cpu", "torch"]
_REL_TOL = bounded_float(0.0, 1.0)  # eta of |w1 - w0| <= eta max(|w0|, |w1|): 1 passes all


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the contract for every bad input), naming the flag and
    pointing at --help, instead of argparse's usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_workers(p: argparse.ArgumentParser, units: str, memory_rule: str) -> None:
    """``--workers`` of a streaming command (``units``: what runs side by side)."""
    p.add_argument(
        "--workers", type=bounded_int(1), default=None,
        help=f"CPU: {units} at once, each on one thread (default: one per thread torch "
        f"has, OMP_NUM_THREADS or the cores, while {memory_rule}); the figures do not "
        "depend on it",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from paramgeom.checkpoints import synth_cli as synth

    parser = _Parser(
        prog="paramgeom",
        description="Parameter-space geometry of post-training (arXiv 2606.07082).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backends", help="what is usable here and why not the rest")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_backends)
    p = sub.add_parser(
        "bench",
        help="kernels vs plain torch and vs the hardware limit measured in the same run",
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute on a CPU)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline only")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    p.add_argument("--quiet", action="store_true", help="no progress, no table on stdout")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "diff",
        help="the paper's diagnostics for a base/tuned checkpoint pair",
        description="Per-tensor unchanged fraction, update norms and ranks, subspace rotation "
        "and spectral drift of TUNED against BASE (HF folders, sharded or not, .safetensors "
        "files, torch state dicts or torch.distributed.checkpoint folders), streamed in "
        "bounded memory and resumable: rerunning the same command after a crash skips "
        "finished tensors. Under torchrun the ranks share the tensors.",
    )
    p.add_argument("base", help="base checkpoint (folder, .safetensors, state dict, DCP folder)")
    p.add_argument(
        "tuned", nargs="+",
        help="tuned checkpoint; several: each in OUT/<its folder name>/, the base's "
        "decompositions computed once (see --base-cache)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--base-cache", metavar="DIR", default=None,
        help="folder of the base's top-K decompositions, keyed by content: read where "
        "present, written where not, so later diffs against the same base skip them "
        "(default with several tuned checkpoints: OUT/base-cache; with one: none)",
    )  # fmt: skip
    p.add_argument("--no-base-cache", action="store_true",
                   help="never read or write a base cache")  # fmt: skip
    p.add_argument(
        "--rank", type=bounded_int(1), default=None,
        help="K of the subspaces (default: min(m, n) // 8 per matrix, the paper's 512 of "
        "4096); a side of a matrix with only K dimensions gets no angles",
    )  # fmt: skip
    p.add_argument("--no-angles", action="store_true", help="skip the subspace rotation")
    p.add_argument(
        "--no-spectra", action="store_true",
        help="statistics only (unchanged fractions, norms): no SVD at all; the fastest scan",
    )  # fmt: skip
    p.add_argument("--rel-tol", type=_REL_TOL, default=1e-3, help="eta of the bf16 rule")
    p.add_argument("--atol", type=bounded_float(0.0), default=1e-5,
                   help="absolute rule of older tools")  # fmt: skip
    p.add_argument(
        "--exact-threshold", type=bounded_int(0), default=None,
        help="exact spectrum when min(m, n) <= this (default: always up to 4096, and up to "
        "16384 where K >= min(m, n) / 8 - 10, as with the default K; else block Krylov)",
    )  # fmt: skip
    p.add_argument("--chunk-bytes", type=synth.size_arg, default=synth.parse_size("1GiB"),
                   help="pairs larger than this are read in row blocks (default 1GiB)")  # fmt: skip
    p.add_argument(
        "--masks", action="store_true",
        help="also where the changed entries fall: W0's principal mask (top half of its "
        "rank-64 reconstruction) and low-magnitude mask (bottom half of |W0|); costs a "
        "rank-64 SVD of W0 and two full-size masks per matrix",
    )  # fmt: skip
    p.add_argument("--strict", action="store_true", help="missing/extra tensors are an error")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", choices=_BACKENDS, default="auto")
    _add_workers(p, "tensors computed", "memory holds 4 --chunk-bytes per worker")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.add_argument(
        "--offline", action="store_true",
        help="Hugging Face repo ids (org/name[@rev]) from the local cache only: no download",
    )  # fmt: skip
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser(
        "trajectory",
        help="update rank, Sim_K and subspace locking over a run's checkpoints",
        description="Follow every attention/MLP matrix's update dW_t = W_t - W_0 over the "
        "checkpoints (given in training order; steps read from names like checkpoint-300): "
        "stable rank, ||dW_t||_F, Hill alpha, Sim_K(t, t_end) and the lock step. Each "
        "checkpoint is read once; per matrix only a streaming sketch is kept.",
    )
    p.add_argument("base", help="base checkpoint (W_0)")
    p.add_argument(
        "checkpoints", nargs="+",
        help="checkpoints in training order, or a training run's folder (sub-folders "
        "checkpoint-N, global_step_N, step-N, iter_N: taken in step order)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=bounded_int(1), default=16,
                   help="K of Sim_K and the lock rule (16)")  # fmt: skip
    p.add_argument(
        "--sketch-rank", type=bounded_int(1), default=None,
        help="keep a rank-R streaming sketch per matrix (cheapest, least accurate) instead of "
        "the default warm-started randomized range finder",
    )  # fmt: skip
    p.add_argument("--lock-threshold", type=bounded_float(0.0, 1.0, low_open=True), default=0.9,
                   help="Sim_K lock level, in (0, 1] (0.9)")  # fmt: skip
    p.add_argument("--rel-tol", type=_REL_TOL, default=1e-3, help="eta of the bf16 rule")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", choices=_BACKENDS, default="auto")
    _add_workers(p, "matrices followed", "memory allows")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.add_argument(
        "--offline", action="store_true",
        help="Hugging Face repo ids (org/name[@rev]) from the local cache only: no download",
    )  # fmt: skip
    p.set_defaults(func=_cmd_trajectory)

    p = sub.add_parser(
        "reproduce",
        help="the paper's Key Results from our own OPD/SFT/RLVR runs, end to end",
        description="Train a teacher and a student base, run OPD, SFT, RLVR and the paper's "
        "variants, the functional sufficiency test and a guardrail experiment with the "
        "drivers, diff and follow every run with the engine, and write report.md/.html "
        "(the paper's table beside ours), summary.json, commands.sh and plots. Rerunning the "
        "same command resumes. --quick: about 25 minutes on 2 CPU cores; without it: the "
        "paper-width model, three seeds and the scaling sizes (hours on a CPU).",
    )
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="tiny model, 2 seeds, 300 steps")
    g.add_argument("--smoke", action="store_true", help="a minute or two: checks the pipeline")
    p.add_argument("--jobs", type=bounded_int(1), default=None,
                   help="processes at a time (default: CPU cores / --threads)")  # fmt: skip
    p.add_argument("--threads", type=bounded_int(1), default=1,
                   help="CPU threads per process (1)")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.set_defaults(func=_cmd_reproduce)

    synth.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from paramgeom.checkpoints.errors import CheckpointError

    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by paramgeom.checkpoints.hub (and torchrun ranks)
    try:
        return args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        msg = " ".join(str(exc).split())
        print(f"paramgeom {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paramgeom {args.command}: interrupted; finished work is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
