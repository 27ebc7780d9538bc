"""How big a ``paramgeom reproduce`` run is: ``--smoke``, ``--quick`` or the full run.

Every figure of the report comes from runs of the embedded default (``paramgeom.drivers``:
the addition task, Llama-style models built from a config, a teacher trained first and a
weaker student base). A profile fixes the sizes, seeds and budgets; everything else
(objectives, variants, analysis) is the same at every size.

K of Sim_K and of the lock rule is chosen relative to the width (DESIGN.md "Drivers":
thresholds in dimensions only mean something when the matrices are much wider than K).
The paper uses K = 16 at width 4096 (Qwen3-8B), K/width = 1/256, which leaves less than one
dimension at width 128. We use K = width / 32 (4 at 128, 8 at 256, 16 at 512): the measured
stable rank of our updates is 3-10 at width 128, so K = 4 separates low from high-dimensional
updates there, and at width 512 K is the paper's 16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PROFILES", "Profile", "lock_k", "rotation_k"]


def lock_k(width: int) -> int:
    """K of Sim_K and the lock rule for matrices of hidden size ``width`` (module docstring)."""
    return max(2, width // 32)


def rotation_k(width: int, override: int | None = None) -> int:
    """k of the subspace-rotation angles: width / 8 (the paper's 512 of 4096) unless set."""
    return override or max(2, width // 8)


@dataclass(frozen=True)
class Profile:
    """Sizes, seeds and budgets of one reproduce run."""

    name: str
    main_size: str  # the model every experiment runs on
    scaling_sizes: tuple[str, ...]  # extra sizes for the three-way comparison only
    seeds: tuple[int, ...]  # seeds of the three methods (spread) and of the guardrail
    steps: int
    save_every: int
    eval_every: int
    eval_size: int
    teacher_steps: int
    student_steps: int
    student_target: float
    lr: float
    digits: int = 3  # operand digits of the addition task
    prompts: int = 16
    samples: int = 8
    batch: int = 128
    project_k: int = 16  # the paper's top-16 subspace (functional sufficiency)
    project_at: float = 0.2
    monitor_every: int = 0  # 0: every save_every steps
    diff_rank: int | None = None  # k of the rotation angles (None: rotation_k(width))
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def monitor_interval(self) -> int:
        return self.monitor_every or self.save_every


PROFILES: dict[str, Profile] = {
    # CI: checks the pipeline and the table end to end in a minute or two; the figures
    # themselves mean little (a few steps of briefly trained models on 1-digit addition,
    # where a short pretraining already gives the rewards RLVR needs).
    "smoke": Profile(
        name="smoke",
        main_size="tiny",
        scaling_sizes=(),
        seeds=(0, 1),
        steps=6,
        save_every=2,
        eval_every=3,
        eval_size=32,
        teacher_steps=150,
        student_steps=60,
        student_target=0.3,
        lr=3e-4,
        digits=1,
        prompts=8,
        samples=4,
        batch=32,
        note="smoke: pipeline check only; the figures are not meaningful",
    ),
    # The README's first command: 2 CPU cores, under 30 minutes, one size, two seeds.
    "quick": Profile(
        name="quick",
        main_size="tiny",
        scaling_sizes=(),
        seeds=(0, 1),
        steps=300,
        save_every=15,
        eval_every=30,
        eval_size=512,
        teacher_steps=1500,
        student_steps=600,
        student_target=0.6,
        lr=3e-6,
    ),
    # A GPU or a patient CPU: the paper-width model (hidden 512), three seeds, longer runs,
    # and the three-way comparison also at the two smaller sizes.
    "full": Profile(
        name="full",
        main_size="base",
        scaling_sizes=("tiny", "small"),
        seeds=(0, 1, 2),
        steps=1000,
        save_every=25,
        eval_every=50,
        eval_size=1024,
        teacher_steps=3000,
        student_steps=1500,
        student_target=0.6,
        lr=3e-6,
    ),
}
