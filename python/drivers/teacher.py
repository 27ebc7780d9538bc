"""The embedded teacher and student base: trained on the task once, then cached.

DESIGN.md "Drivers": "the teacher trained first on the task, the student started from a
weaker checkpoint". Both are small Llama-style models trained from scratch by SFT on gold
answers with the shared loop, from the same seed and on the same schedule, so the student
base is an earlier checkpoint of the teacher's own run:

- teacher: ``teacher_steps`` (default 1500) steps, to high held-out accuracy;
- student base: the same run (seed, data order, cosine horizon ``teacher_steps``) stopped at
  the first evaluation (every 25 steps) whose held-out accuracy reaches ``student_target``
  (default 0.6), or after ``student_steps`` (default 600), so post-training has room to
  improve it.

Why one run and not two seeds: on the tiny model held-out accuracy stays near 0 for a
seed-dependent 500 to more than 700 steps and then jumps (seed 1: 0.035 at step 500, 0.69 at
600, 0.88 at 1500, 300 s on one CPU thread; seed 2 still at 0.01 after 700 steps), so a
second seed's student could need more steps than the teacher. Stopping the teacher's own run
lands reliably near step 575 at about 0.6.

Recipe: AdamW (betas 0.9/0.98, weight decay 0.01), peak lr 1e-3, 50 warm-up steps, cosine
decay to 10%, 128 problems per step, gradient clipping at 1 (~0.2 s per step on one thread).

Cache: ``--cache DIR``, else ``$PARAMGEOM_CACHE``, else ``$XDG_CACHE_HOME/paramgeom/drivers``
(``~/.cache/paramgeom/drivers``). Each model is a bf16 Hugging Face folder named
``<role>-<size>-d<digits>-<hash of the recipe and task>`` with ``paramgeom_recipe.json``
(recipe, accuracy before and after bf16 rounding, time). It is trained in a temporary folder
and renamed into place, so an interrupted run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from paramgeom.drivers.loop import LoopConfig, evaluate, train, write_json
from paramgeom.drivers.models import build_model, count_parameters, load_model, save_model
from paramgeom.drivers.steps import SFTStep
from paramgeom.drivers.storage import writing
from paramgeom.drivers.task import ArithmeticTask, CharTokenizer

__all__ = [
    "PretrainRecipe",
    "default_cache_dir",
    "ensure_pretrained",
    "student_recipe",
    "teacher_recipe",
]

RECIPE_FILE = "paramgeom_recipe.json"
# Bump when the training code changes what a recipe produces, so old entries are not reused.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class PretrainRecipe:
    """How a cached model is trained (every field enters the cache key)."""

    role: str
    size: str
    steps: int
    seed: int
    lr: float = 1e-3
    warmup: int = 50
    batch: int = 128
    weight_decay: float = 0.01
    stop_accuracy: float | None = None
    eval_every: int = 50
    decay_steps: int | None = None

    def key(self, task: ArithmeticTask, codec: CharTokenizer) -> str:
        blob = json.dumps(
            {"format": CACHE_FORMAT, "recipe": asdict(self), "task": task.config(),
             "tokenizer": codec.fingerprint()},
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def teacher_recipe(size: str = "tiny", steps: int = 1500) -> PretrainRecipe:
    return PretrainRecipe(role="teacher", size=size, steps=steps, seed=1)


def student_recipe(
    size: str = "tiny", steps: int = 600, target: float = 0.6, horizon: int = 1500
) -> PretrainRecipe:
    return PretrainRecipe(
        role="student", size=size, steps=steps, seed=1, stop_accuracy=target, eval_every=25,
        decay_steps=max(horizon, steps),
    )  # fmt: skip


def default_cache_dir() -> Path:
    """``$PARAMGEOM_CACHE``, else ``$XDG_CACHE_HOME/paramgeom/drivers``, else
    ``~/.cache/paramgeom/drivers``."""
    env = os.environ.get("PARAMGEOM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "paramgeom" / "drivers"


def ensure_pretrained(
    recipe: PretrainRecipe,
    task: ArithmeticTask,
    cache_dir: Path,
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict]:
    """The cached folder of ``recipe`` on ``task``, training it first if absent.

    Returns ``(folder, record)`` with the contents of ``paramgeom_recipe.json``.
    """
    say = log or (lambda _m: None)
    codec = CharTokenizer()
    name = f"{recipe.role}-{recipe.size}-d{task.digits}-{recipe.key(task, codec)}"
    cache_dir = Path(cache_dir)
    folder = cache_dir / name
    if (folder / RECIPE_FILE).is_file():
        return folder, json.loads((folder / RECIPE_FILE).read_text())
    with writing(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _train_entry(recipe, task, codec, tmp, folder, say)
    except BaseException:
        # A full disk (DriverError naming the file), an error, Ctrl-C: no half entry.
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _train_entry(
    recipe: PretrainRecipe,
    task: ArithmeticTask,
    codec: CharTokenizer,
    tmp: Path,
    folder: Path,
    say: Callable[[str], None],
) -> tuple[Path, dict]:
    say(f"training the {recipe.role} ({recipe.size}, up to {recipe.steps} steps) into {folder}")
    t0 = time.perf_counter()
    model = build_model(recipe.size, codec, recipe.seed)
    cfg = LoopConfig(
        steps=recipe.steps,
        lr=recipe.lr,
        warmup=min(recipe.warmup, recipe.steps - 1),
        schedule="cosine",
        decay_steps=recipe.decay_steps,
        weight_decay=recipe.weight_decay,
        betas=(0.9, 0.98),
        eval_every=recipe.eval_every,
        stop_accuracy=recipe.stop_accuracy,
        seed=recipe.seed,
        log_every=50,
    )
    result = train(
        model, SFTStep(task, codec, batch=recipe.batch, source="gold"), cfg,
        task=task, codec=codec, log=lambda m: say(f"  {recipe.role} {m}"),
    )  # fmt: skip
    save_model(model, tmp, codec)
    # The stored weights are bf16: measure the accuracy of what later runs will load.
    stored, _ = load_model(tmp, recipe.role)
    acc_bf16 = evaluate(stored, codec, task.eval_set(), task.max_new_tokens)
    record = {
        "recipe": asdict(recipe),
        "task": task.config(),
        "tokenizer": codec.fingerprint(),
        "parameters": count_parameters(model),
        "steps_done": result.steps_done,
        "eval_accuracy_fp32": result.final_accuracy,
        "eval_accuracy": acc_bf16,
        "evals": result.evals,
        "train_s": round(time.perf_counter() - t0, 1),
        "step_s": round(result.step_s, 4),
    }
    write_json(tmp / RECIPE_FILE, record)
    try:
        os.replace(tmp, folder)
    except OSError:
        # Another process cached the same recipe meanwhile: keep theirs.
        shutil.rmtree(tmp, ignore_errors=True)
        return folder, json.loads((folder / RECIPE_FILE).read_text())
    say(
        f"{recipe.role}: held-out accuracy {acc_bf16:.3f} after {result.steps_done} steps "
        f"({record['train_s']} s)"
    )
    return folder, record
