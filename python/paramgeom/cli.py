"""The ``paramgeom`` command line.

Exit status: 0 on success, 2 on bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from rich.console import Console
from rich.table import Table


def _cmd_backends(args: argparse.Namespace) -> int:
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
        f"GEMM {lim['gemm_tflops']:.2f} TFLOP/s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"paramgeom {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
