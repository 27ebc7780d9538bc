"""SFT driver: cross-entropy on teacher-generated (default) or gold completions.

DESIGN.md "Drivers", SFT: ``L = -(1/T) sum_t log pi(y_t)`` over the tokens of reference
completions, ``--batch`` (128) problems per step; ``--sft-target teacher`` samples one
completion per prompt from the teacher at ``--temperature``, ``gold`` uses the task's
answers (no teacher needed). ``--token-keep rho`` drops tokens (loss rescaled by T/kept).

    python -m paramgeom.drivers.sft --out DIR [--steps N] [--save-every K] [--seed S]
        [--model-size tiny] [--model PATH] [--teacher PATH] [--sft-target gold] ...

``--help`` lists every flag; the shared command line is :mod:`paramgeom.drivers.cli`.
"""

from __future__ import annotations

import sys

from paramgeom.drivers.cli import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the sft driver on ``argv`` (default ``sys.argv[1:]``); exit status 0 or 2."""
    return run("sft", argv)


if __name__ == "__main__":
    sys.exit(main())
