"""``paramgeom synth``'s command line: its parser and size / step arguments, free of torch
(``paramgeom --help`` builds every parser without importing torch); the command itself
(:func:`paramgeom.checkpoints.synth._cmd_synth`) is imported when it runs."""

from __future__ import annotations

import argparse
import re

__all__ = ["DTYPE_NAMES", "add_parser", "parse_size", "size_arg"]

DTYPE_NAMES = ("bf16", "fp16", "fp32", "fp8")
"""The dtypes ``paramgeom synth`` writes (keys of :data:`paramgeom.checkpoints.synth.DTYPES`)."""

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """``"200MB"`` -> 200_000_000, ``"2GB"``, ``"1.5GiB"``, ``"4096"`` (bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (examples: 200MB, 2GB, 1.5GiB)")
    value = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return int(value)


def size_arg(text: str) -> int:
    """:func:`parse_size` as an argparse ``type`` (bad sizes are usage errors)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --steps {text!r} (example: 10,20,30)") from None
    if not steps or min(steps) <= 0:
        raise argparse.ArgumentTypeError(f"--steps needs positive integers, got {text!r}")
    return steps


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``paramgeom synth`` on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic base/tuned checkpoint pair with a known low-rank update",
        description=(
            "Write OUT/base and OUT/tuned (Hugging Face-style folders of safetensors) where "
            "tuned = base + a rank-r update per matrix, deterministic from --seed; with "
            "--steps also OUT/checkpoint-<s> holding (s / max step) of the update."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--arch", choices=("llama", "moe"), default="llama")
    p.add_argument(
        "--size", type=size_arg, default=None, help="about this many bytes per checkpoint "
        "(e.g. 200MB, 2GB); picks --hidden/--layers unless given",
    )  # fmt: skip
    for name, default in (
        ("hidden", 256),
        ("layers", 2),
        ("intermediate", 688),
        ("vocab", 1024),
        ("heads", 4),
        ("kv-heads", 2),
        ("experts", 4),
    ):
        p.add_argument(f"--{name}", type=int, default=None, help=f"(default {default})")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="bf16")
    p.add_argument("--tuned-dtype", choices=DTYPE_NAMES, default=None, help="(default --dtype)")
    p.add_argument("--tuned-prefix", default=None, help="name prefix of the tuned tensors")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--expert-layout", choices=("split", "fused"), default="split")
    p.add_argument("--tie-embeddings", action="store_true")
    p.add_argument("--steps", type=_arg_steps, default=None, help="trajectory, e.g. 10,20,30")
    p.add_argument("--update-rank", type=int, default=4)
    p.add_argument("--update-scale", type=float, default=1e-2)
    p.add_argument(
        "--base-decay", type=float, default=0.0, metavar="A",
        help="scale column j of every base matrix by (j+1)^-A: singular values falling "
        "about as i^-A, as trained weights' do (default 0: Gaussian, no gap anywhere)",
    )  # fmt: skip
    p.add_argument(
        "--base-spikes", type=int, default=0, metavar="N",
        help="add N singular values far above the rest to every base matrix (spikes, as "
        "trained weights have; default 0)",
    )  # fmt: skip
    p.add_argument(
        "--spike-size", type=float, default=30.0, metavar="R",
        help="the largest spike, R times the Gaussian draw's largest singular value; the "
        "others fall linearly to R/2 (default 30)",
    )  # fmt: skip
    p.add_argument("--changed-fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from paramgeom.checkpoints.synth import _cmd_synth

    return _cmd_synth(args)
