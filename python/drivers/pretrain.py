"""Train (or find in the cache) the embedded teacher or student base, outside any driver.

    python -m paramgeom.drivers.pretrain --role teacher|student --cache DIR
        [--model-size tiny] [--digits 3] [--eval-size 512] [--teacher-steps 1500]
        [--student-steps 600] [--student-target 0.6] [--threads N] [--quiet]

The recipe and task are those ``python -m paramgeom.drivers.{sft,opd,rlvr}`` build from the
same flags (:func:`paramgeom.drivers.teacher.teacher_recipe` / ``student_recipe``), so a
driver run later with the same ``--cache`` and flags finds this entry and trains nothing
(e.g. to pretrain both models once before launching runs side by side). Prints the cached
folder as the last line on stdout; progress goes to stderr. Exit status 0, or 2 with one
line on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from paramgeom.drivers.cli import _Parser, _positive_int, _unit, guarded
from paramgeom.drivers.errors import DriverError

__all__ = ["build_parser", "main"]


def build_parser() -> _Parser:
    p = _Parser(
        prog="python -m paramgeom.drivers.pretrain",
        description="Train or find the cached embedded teacher or student base.",
    )
    p.add_argument("--role", required=True, choices=["teacher", "student"])
    p.add_argument("--cache", required=True, help="cache folder (the drivers' --cache)")
    p.add_argument("--model-size", default="tiny", help="embedded size: tiny, small, base")
    p.add_argument("--digits", type=int, default=3, help="digits per operand (3)")
    p.add_argument("--eval-size", type=_positive_int, default=512, help="held-out problems")
    p.add_argument("--teacher-steps", type=_positive_int, default=1500,
                   help="training steps of the teacher; also the student's cosine horizon "
                   "(1500)")  # fmt: skip
    p.add_argument("--student-steps", type=_positive_int, default=600,
                   help="most training steps of the student base (600)")  # fmt: skip
    p.add_argument("--student-target", type=_unit, default=0.6,
                   help="the student base stops at this held-out accuracy (0.6)")  # fmt: skip
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, ensure the cached model; 0 on success, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: _run(args))


def _run(args) -> int:
    from paramgeom.drivers import models, teacher
    from paramgeom.drivers.task import ArithmeticTask

    if args.model_size not in models.SIZES:
        raise DriverError(f"--model-size must be one of {', '.join(models.SIZES)}")
    try:
        task = ArithmeticTask(digits=args.digits, eval_size=args.eval_size)
    except ValueError as exc:
        raise DriverError(f"task: {exc}") from None
    cache = Path(args.cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DriverError(f"--cache {cache}: cannot create ({exc.strerror})") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    # The same recipes, from the same flags, as paramgeom.drivers.cli: one cache entry.
    if args.role == "teacher":
        recipe = teacher.teacher_recipe(args.model_size, args.teacher_steps)
    else:
        recipe = teacher.student_recipe(
            args.model_size, args.student_steps, args.student_target, args.teacher_steps
        )
    said: list[str] = []

    def say(msg: str) -> None:
        said.append(msg)
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    folder, rec = teacher.ensure_pretrained(recipe, task, cache, say)
    if not said:  # found in the cache: nothing was trained or reported
        say(f"{args.role}: cached, held-out accuracy {rec['eval_accuracy']:.3f} after "
            f"{rec['steps_done']} steps")  # fmt: skip
    print(folder, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
