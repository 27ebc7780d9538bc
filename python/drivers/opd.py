"""OPD driver: on-policy distillation with the sampled-token reverse-KL advantage.

DESIGN.md "Drivers", OPD (arXiv 2606.07082): the student samples ``--samples`` completions
of ``--prompts`` prompts per step; each token gets ``A_t = -(log pi_s(a_t) - log pi_t(a_t))``
in the policy-gradient loss ``-(1/T) sum_t A_t log pi_s(a_t)``. Variants: ``--full-kl``
(exact full-vocabulary reverse KL), ``--mix-rlvr a`` (``A = a A_OPD + (1 - a) A_RLVR``),
``--token-keep rho`` (token sparsification), ``--off-policy`` (teacher rollouts, truncated
importance ratios ``min(pi_s / pi_t, --is-clip)``), ``--project-grad-from`` (functional
sufficiency test).

    python -m paramgeom.drivers.opd --out DIR [--steps N] [--save-every K] [--seed S]
        [--model-size tiny] [--model PATH --teacher PATH] ...

``--help`` lists every flag; the shared command line is :mod:`paramgeom.drivers.cli`.
"""

from __future__ import annotations

import sys

from paramgeom.drivers.cli import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the opd driver on ``argv`` (default ``sys.argv[1:]``); exit status 0 or 2."""
    return run("opd", argv)


if __name__ == "__main__":
    sys.exit(main())
