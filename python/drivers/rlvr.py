"""RLVR driver: GRPO-style group-normalised advantages from the verifiable reward.

DESIGN.md "Drivers", RLVR: ``--samples`` completions of each of ``--prompts`` prompts per
step; the exact-answer reward is normalised within each prompt's group,
``A = (r - mean) / (std + eps)``, and shared by the sequence's tokens in the
policy-gradient loss (no KL penalty, one update per batch). No teacher is needed unless
``--off-policy`` (rollouts sampled from the teacher, truncated importance ratios).

    python -m paramgeom.drivers.rlvr --out DIR [--steps N] [--save-every K] [--seed S]
        [--model-size tiny] [--model PATH] ...

``--help`` lists every flag; the shared command line is :mod:`paramgeom.drivers.cli`.
"""

from __future__ import annotations

import sys

from paramgeom.drivers.cli import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the rlvr driver on ``argv`` (default ``sys.argv[1:]``); exit status 0 or 2."""
    return run("rlvr", argv)


if __name__ == "__main__":
    sys.exit(main())
