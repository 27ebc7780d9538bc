"""``paramgeom trajectory``: how each matrix's update dW_t = W_t - W_0 evolves over training.

DESIGN.md "Metrics", Trajectory and Subspace locking. Every checkpoint is read once: the
engine walks the attention/MLP matrices in the base's order and, for each, reads the base
matrix and then that matrix from each checkpoint in turn, keeping per step only the
streaming sketch's top singular values and right vectors of dW_t (a Tropp-Yurtsever-
Udell-Cevher sketch, :class:`paramgeom.linalg.Sketch`), never dW_t itself. Sim_K(t, t_end)
is computed once the last checkpoint's sketch is in.

Two ways to get each step's top singular triplets, both from the pair while it is in memory
and both keeping only ``(s, V)`` per step: the default runs the randomized range finder on
the implicit difference (:func:`paramgeom.linalg.randomized_svd`, two power iterations)
warm-started from the previous step's right vectors (``init=``: consecutive checkpoints
share most of their subspace); ``sketch_rank=R`` keeps a rank-R streaming sketch instead
(two fused passes per step, the cheapest, but its top vectors carry an error of the order
of dW's tail energy: measured in tests/test_engine_synth.py, a rank-2 update under bf16
rounding noise gave Sim_2 0.85 with R = 4 and 0.98 with R = 16 where the exact value is
0.996; the range finder gives it to 1e-3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paramgeom
from paramgeom import linalg, metrics
from paramgeom.checkpoints.dcp import is_dcp_folder
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.pairing import RULES, PairedTensor, pair_checkpoints
from paramgeom.checkpoints.reader import open_checkpoint
from paramgeom.engine import distributed
from paramgeom.engine.compute import spectral_inputs
from paramgeom.engine.journal import FileIdentities, entry_key
from paramgeom.engine.loader import Prefetcher, Stored, read_stored, stored_stats_args
from paramgeom.engine.pipeline import (
    compute_device,
    describe_inputs,
    make_output_dir,
    resolve_workers,
    stream_units,
)
from paramgeom.engine.schema import TRAJECTORY_COLUMNS

__all__ = ["TrajectoryOptions", "run_trajectory", "step_of"]

MATRIX_MODULES = ("q", "k", "v", "o", "gate", "up", "down", "expert")
_STEP = re.compile(r"(?:checkpoint|step|ckpt|iter|global_step)[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class TrajectoryOptions:
    """``k``: K of Sim_K and of the lock rule (paper 16); ``sketch_rank``: None for the
    warm-started range finder (default, K + ``oversample`` vectors), else the rank of each
    matrix's streaming sketch (at least K); ``lock_threshold``: Sim_K level of the lock
    rule (paper 0.9)."""

    k: int = 16
    sketch_rank: int | None = None
    lock_threshold: float = 0.9
    rel_tol: float = 1e-3
    seed: int = 0
    oversample: int = 10
    power_iters: int = 2
    backend: str = "auto"
    device: str = "cpu"

    @property
    def rank(self) -> int:
        return self.sketch_rank if self.sketch_rank is not None else self.k + self.oversample

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


_STEP_FOLDER = re.compile(rf"^{_STEP.pattern}$", re.IGNORECASE)
# Files that make a folder a checkpoint of its own (then it is never read as a run folder).
_CHECKPOINT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth")


def run_checkpoints(path: str | Path) -> list[Path] | None:
    """The checkpoints of a training run's folder, in step order, or None when ``path`` is
    not one: a folder that holds no checkpoint files itself (no ``*.safetensors``, ``.bin``,
    ``.pt``, DCP ``.metadata``) but sub-folders named by step (``checkpoint-300``,
    ``global_step_300`` (verl), ``step-300`` (torchtitan), ``iter_0000300`` (Megatron),
    ``step_300``, ``ckpt-300``). Steps are compared as numbers (``step-10`` after
    ``step-9``); two sub-folders of one step are a ``CheckpointError``."""
    folder = Path(path)
    if not folder.is_dir() or is_dcp_folder(folder):
        return None
    if any(next(folder.glob(pattern), None) is not None for pattern in _CHECKPOINT_FILES):
        return None
    found: dict[int, Path] = {}
    for child in folder.iterdir():
        m = _STEP_FOLDER.match(child.name)
        if m is None or not child.is_dir():
            continue
        step = int(m.group(1))
        if step in found:
            raise CheckpointError(
                folder, None, f"two checkpoints of step {step}: {found[step].name}, {child.name}"
            )
        found[step] = child
    return [found[s] for s in sorted(found)] or None


def expand_runs(checkpoints: Sequence[str | Path]) -> list[str | Path]:
    """``checkpoints`` with each training run's folder (:func:`run_checkpoints`) replaced by
    its checkpoints in step order."""
    out: list[str | Path] = []
    for c in checkpoints:
        run = run_checkpoints(c)
        out.extend(run if run is not None else [c])
    return out


def step_of(path: str | Path, position: int) -> int:
    """Training step of a checkpoint from its name (``checkpoint-300``, ``step_300``, ...),
    else its 1-based position in the list."""
    for part in reversed(Path(path).parts):
        m = _STEP.search(part)
        if m:
            return int(m.group(1))
    return position


@dataclass(frozen=True)
class _Matrix:
    """One matrix (or one expert of a fused stack) followed over the checkpoints."""

    name: str
    pairs: tuple[PairedTensor, ...]  # base vs each checkpoint
    expert: int | None

    @property
    def nbytes(self) -> int:
        per = self.pairs[0].base.nbytes + sum(p.tuned.nbytes for p in self.pairs)
        return per // (self.pairs[0].shape[0] if self.expert is not None else 1)

    def digest(self) -> str:
        text = ";".join(f"{p.base.name}>{p.name}:{p.shape}" for p in self.pairs)
        return hashlib.sha256(f"{self.name}|{self.expert}|{text}".encode()).hexdigest()[:32]


def _matrices(pairings, base) -> tuple[list[_Matrix], list[str]]:
    notes = []
    by_name = [{p.base.name: p for p in pairing.pairs} for pairing in pairings]
    out = []
    for name in base.tensors:
        pairs = [m.get(name) for m in by_name]
        if any(p is None for p in pairs):
            if any(p is not None for p in pairs):
                notes.append(f"{name}: missing from some checkpoints: not followed")
            continue
        meta = pairs[0].meta
        if meta.module not in MATRIX_MODULES or min(pairs[0].shape, default=0) == 0:
            continue
        if len(pairs[0].shape) == 2:
            out.append(_Matrix(pairs[-1].name, tuple(pairs), None))
        elif len(pairs[0].shape) == 3 and meta.module == "expert":
            for e in range(pairs[0].shape[0]):
                out.append(_Matrix(f"{pairs[-1].name}[{e}]", tuple(pairs), e))
    return out, notes


def _follow(
    mat: _Matrix, reads, steps, names, opts: TrajectoryOptions, device
) -> tuple[list[dict], list[str]]:
    """Rows (one per checkpoint) of one matrix from its base and per-checkpoint tensors, and
    a note for each step whose pair holds NaN/Inf (no spectra there); every kernel on
    ``opts.backend``."""
    with linalg.kernel_backend(opts.backend):
        return _follow_on_backend(mat, reads, steps, names, opts, device)


def _stats(base: Stored, side: Stored, opts: TrajectoryOptions):
    """Statistics of a step against the base, from the stored bytes where the kernel can
    read them (else from bf16 values)."""
    args = stored_stats_args(base, side) or {"w0": base.bf16(), "w1": side.bf16()}
    return paramgeom.diff_stats(**args, rel_tols=(opts.rel_tol,), backend=opts.backend)


def _follow_on_backend(
    mat: _Matrix, reads, steps, names, opts: TrajectoryOptions, device
) -> tuple[list[dict], list[str]]:
    base = w0 = None
    sketch = None
    width = 0
    init = None
    stats, tops = [], []
    for t, side in reads:
        side = side.to(device)  # as stored: the scan's kernel reads it as the file holds it
        if t < 0:
            base, w0 = side, side.bf16()  # the spectra read the base at every step
            m, n = w0.shape
            width = min(opts.rank, m, n)
            if opts.sketch_rank is not None:
                sketch = linalg.Sketch((m, n), width, seed=opts.seed, device=device)
            continue
        stats.append(_stats(base, side, opts))
        if stats[-1].n_nonfinite_w0 or stats[-1].n_nonfinite_w1 or stats[-1].sum_sq_delta == 0:
            tops.append(None)
            continue
        w = side.bf16()
        a, b, factor = spectral_inputs(w0, w, stats[-1:])  # finite extremes: scaled
        if sketch is not None:
            _, s, vh = sketch.update(a, b).svd()
        else:
            _, s, vh = linalg.randomized_svd(
                a, b, k=width, oversample=0 if init is not None else opts.oversample,
                power_iters=opts.power_iters, seed=opts.seed, init=init, exact_threshold=0,
            )  # fmt: skip
            init = vh.T
        tops.append((s.cpu().double() * factor, vh.T.cpu()))
        del w
    meta = mat.pairs[0].meta
    k = min(opts.k, width)
    end = tops[-1]
    rows, notes = [], []
    for t, (st, top) in enumerate(zip(stats, tops, strict=True)):
        fb = math.sqrt(st.sum_sq_w0)
        fd = math.sqrt(st.sum_sq_delta)
        nonfinite = st.n_nonfinite_w0 + st.n_nonfinite_w1
        if nonfinite:
            notes.append(
                f"{mat.name} at step {steps[t]} ({names[t]}): {nonfinite} NaN/Inf values "
                f"({st.n_nonfinite_w0} in the base, {st.n_nonfinite_w1} in the checkpoint; "
                "excluded from the figures; no spectra, and no Sim_K against this step)"
            )
        row = {
            "name": mat.name,
            "module": meta.module,
            "layer": meta.layer,
            "expert": mat.expert if mat.expert is not None else meta.expert,
            "shape": f"{w0.shape[0]}x{w0.shape[1]}",
            "numel": st.numel,
            "step": steps[t],
            "checkpoint": names[t],
            "frobenius_delta": fd,
            "relative_change": fd / fb if fb > 0 else None,
            "n_nonfinite": nonfinite,
            "unchanged_fraction": st.n_within_rel[0] / st.numel if st.numel else None,
            "stable_rank": None,
            "hill_alpha": None,
            "sim_k": None,
        }
        if top is None and st.sum_sq_delta == 0 and not (st.n_nonfinite_w0 or st.n_nonfinite_w1):
            row["stable_rank"] = 0.0  # no update (metrics.stable_rank's convention)
        if top is not None:
            s, v = top
            s1 = float(s[0])
            row["stable_rank"] = st.sum_sq_delta / (s1 * s1) if s1 > 0 else 0.0
            alpha = metrics.hill_alpha(s)
            row["hill_alpha"] = alpha if math.isfinite(alpha) else None
            if end is not None and s1 > 0 and float(end[0][0]) > 0:
                row["sim_k"] = metrics.sim_k(v, end[1], K=k)
        rows.append(row)
    return rows, notes


def run_trajectory(
    base_path: str | Path,
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    opts: TrajectoryOptions | None = None,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any] | None:
    """Follow every attention/MLP matrix from ``base_path`` over ``checkpoints`` (in training
    order, the last one is t_end; a training run's folder stands for its checkpoints in step
    order, :func:`run_checkpoints`) into ``out_dir``; the summary on rank 0, None elsewhere.
    ``workers``: matrices followed at once on CPU, each on one thread and reading its own
    checkpoints (None: :func:`~paramgeom.engine.pipeline.default_workers`; on CUDA one at a
    time); the figures do not depend on it."""
    opts = opts or TrajectoryOptions()
    checkpoints = expand_runs(checkpoints)
    if not checkpoints:
        raise ValueError("trajectory needs at least one checkpoint after the base")
    if opts.k < 1 or opts.rank < opts.k:
        raise ValueError(f"need 1 <= k <= sketch rank, got k={opts.k}, rank={opts.rank}")
    if opts.oversample < 0 or opts.power_iters < 0:
        raise ValueError("oversample and power_iters must be >= 0")
    if not 0 < opts.lock_threshold <= 1:  # also refuses NaN
        raise ValueError(
            f"lock_threshold (--lock-threshold) must be in (0, 1], got {opts.lock_threshold}"
        )
    if not 0 <= opts.rel_tol <= 1:
        raise ValueError(f"rel_tol (--rel-tol) must be in [0, 1], got {opts.rel_tol}")
    out = Path(out_dir)
    ctx = distributed.context(opts.device)
    opened = []
    try:
        device = compute_device(opts.device)
        make_output_dir(out)
        base = open_checkpoint(base_path)
        opened.append(base)
        ckpts = []
        for c in checkpoints:
            ckpts.append(open_checkpoint(c))
            opened.append(ckpts[-1])
        steps = [step_of(c, i + 1) for i, c in enumerate(checkpoints)]
        names = [Path(c).name for c in checkpoints]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise CheckpointError(
                checkpoints[0], None, f"checkpoints must be given in training order, steps {steps}"
            )
        pairings = [pair_checkpoints(base, c) for c in ckpts]
        matrices, notes = _matrices(pairings, base)
        if not matrices:
            raise CheckpointError(base.path, None, "no attention/MLP matrix common to all inputs")
        # A matrix in flight holds about 8 of its sides (the base's bf16 copy, the side
        # computing, the one read ahead, their float32 products): two per chunk budget.
        side = max(m.nbytes // (len(ckpts) + 1) for m in matrices)
        n_workers = resolve_workers(workers, device, 2 * side)
        ident = FileIdentities().key
        order = ",".join(f"{s}:{n}" for s, n in zip(steps, names, strict=True))
        fp = f"{opts.fingerprint()}|{order}"
        keys = {}
        for mat in matrices:
            ids = [ident(base, mat.pairs[0].base.info.file)]
            ids += [ident(c, p.tuned.info.file) for c, p in zip(ckpts, mat.pairs, strict=True)]
            keys[mat] = entry_key(mat.digest(), ids, fp)

        def read(item):
            mat, t = item
            pair = mat.pairs[max(t, 0)]
            ckpt, ref = (base, pair.base) if t < 0 else (ckpts[t], pair.tuned)
            if mat.expert is None:
                return read_stored(ckpt, ref)
            return read_stored(ckpt, ref, mat.expert, mat.expert + 1).split()[0]

        def sides_of(mat: _Matrix):
            with Prefetcher([(mat, t) for t in range(-1, len(ckpts))], read, depth=1) as queue:
                for (_, t), w in queue:
                    yield t, w

        def feed(todo: list[_Matrix]):
            # One side at a time (the base, then each checkpoint): a matrix's sides are
            # consumed by its compute as they arrive, so memory holds about two of them.
            if n_workers:  # each matrix reads its own sides, on its worker, one ahead
                yield from ((mat, sides_of(mat)) for mat in todo)
                return
            items = [(m, t) for m in todo for t in range(-1, len(ckpts))]
            with Prefetcher(items, read, depth=1) as queue:
                it = iter(queue)
                for mat in todo:
                    yield mat, ((t, w) for (_, t), w in (next(it) for _ in range(len(ckpts) + 1)))

        def follow(mat: _Matrix, sides) -> tuple[list[dict], list[str]]:
            with contextlib.closing(sides):  # a failed matrix stops its own reads at once
                return _follow(mat, sides, steps, names, opts, device)

        def reads(mat: _Matrix) -> list:
            return [(base, [mat.pairs[0].base.name])] + [
                (c, [p.tuned.name]) for c, p in zip(ckpts, mat.pairs, strict=True)
            ]

        done = stream_units(
            "trajectory", out, ctx, matrices, keys, feed,
            compute=follow, reads=reads, nbytes=lambda m: m.nbytes, quiet=quiet,
            workers=n_workers,
        )  # fmt: skip
        if done is None:
            return None
        if say:
            say("writing tables, plots and report")
        for p in pairings:
            notes += p.notes
        notes += done.notes
        inputs = {
            "base": describe_inputs(base),
            "checkpoints": [describe_inputs(c) for c in ckpts],
        }
        summary = _write_outputs(out, done.rows, notes, opts, inputs, steps)
        # Not in summary.json (it holds figures only); rank 0's own share when distributed.
        summary["run"] = done.run_facts(ctx.world, n_workers)
        return summary
    finally:
        for c in opened:
            c.close()
        ctx.close()


def _write_outputs(out, rows, notes, opts: TrajectoryOptions, inputs, steps) -> dict:
    from paramgeom.report import aggregate, plots, render, tables

    rules = {
        "prefix": RULES["prefix"],
        "dtype": RULES["dtype"],
        "fp8": RULES["fp8"],
        "matrices": "attention and MLP matrices (q, k, v, o, gate, up, down, experts)",
        "k": opts.k,
        "sketch_rank": opts.sketch_rank,
        "lock_threshold": opts.lock_threshold,
        "spectrum": (
            f"per matrix a streaming sketch of rank {opts.rank} (range 2r+1, core 2(2r+1)+1, "
            f"seed {opts.seed})"
            if opts.sketch_rank is not None
            else f"per matrix and step the top {opts.rank} singular triplets of dW_t by the "
            f"randomized range finder ({opts.power_iters} power iterations), warm-started "
            "from the previous step's right vectors"
        )
        + "; stable rank = ||dW_t||_F^2 (exact, fused statistics) / s_1^2; Hill alpha over "
        "those singular values; Sim_K from the top-K right vectors",
        "lock": (
            f"first step from which mean Sim_K(t, t_end) >= {opts.lock_threshold} and mean "
            f"stable rank < K = {opts.k} hold at every later step"
        ),
    }
    try:
        tables.write_table(rows, TRAJECTORY_COLUMNS, out, "trajectory")
        summary = aggregate.summarize_trajectory(rows, k=opts.k, lock_threshold=opts.lock_threshold)
        summary.update(
            {
                "command": "trajectory",
                "rules": rules,
                "options": asdict(opts),
                "inputs": inputs,
                "steps_given": steps,
                "notes": notes,
            }
        )
        tables.write_json(summary, out / "summary.json")
        written = plots.plot_trajectory(rows, summary, out)
        render.write_trajectory_report(summary, out, written)
    except OSError as exc:
        raise CheckpointError(
            out, None, f"cannot write the outputs ({exc.strerror or exc}); every computed "
            "matrix is in the journal: rerun the same command to write them",
        ) from None  # fmt: skip
    return summary
