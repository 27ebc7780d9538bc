"""``paramgeom diff``: the paper's diagnostics for a whole checkpoint pair, streamed.

DESIGN.md "Checkpoints" and "Command line". Tensors are read in the tuned checkpoint's shard
order on a background thread, at most one unit ahead of the compute; a pair larger than the
chunk budget is read in row blocks; on CPU ``--workers`` units compute side by side, one
thread each (engine/pipeline.py); finished units go to the journal in order, each as soon
as it and every unit before it are done; rank 0 writes the tables, the summary, the plots
and the report from the journal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from paramgeom import linalg
from paramgeom.checkpoints.errors import CheckpointError
from paramgeom.checkpoints.pairing import RULES, PairedTensor, pair_checkpoints
from paramgeom.checkpoints.reader import open_checkpoint
from paramgeom.engine import distributed
from paramgeom.engine.base_cache import BaseCache
from paramgeom.engine.compute import (
    EXACT_ALWAYS,
    EXACT_MAX,
    KRYLOV_MIN_BLOCKS,
    RANK_FRACTION,
    DiffOptions,
    block_cache_wanted,
    block_rows,
    defined_sides,
    expert_rows,
    matrix_row,
    small_rows,
)
from paramgeom.engine.journal import FileIdentities, entry_key
from paramgeom.engine.loader import Prefetcher, Stored, read_stored, to_device
from paramgeom.engine.pipeline import (
    compute_device,
    describe_inputs,
    make_output_dir,
    resolve_workers,
    stream_units,
)
from paramgeom.engine.plan import Unit, build_units
from paramgeom.engine.schema import DIFF_COLUMNS
from paramgeom.linalg.subspaces import SUBSPACE_TOL

__all__ = ["Streamer", "run_diff", "run_diffs", "tuned_labels"]

# How far ahead of the compute the kernel is asked to read (page cache, not our memory).
READAHEAD_BYTES = 1 << 30


class Streamer:
    """Reads units of a (base, tuned) checkpoint pair onto the compute device, every side as
    stored (:class:`~paramgeom.engine.loader.Stored`): the kernels read it as the file
    holds it."""

    def __init__(
        self, base, tuned, opts: DiffOptions, device: torch.device, cache: BaseCache | None = None
    ) -> None:
        self.base, self.tuned, self.opts, self.device = base, tuned, opts, device
        self.cache = cache
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ids = FileIdentities()
        self._units: list[Unit] = []
        self._order: dict[Unit, int] = {}
        self._advised = -1
        self._readahead = 0

    # -- identities ------------------------------------------------------------------------
    def identities(self, unit: Unit) -> list[str]:
        """Identity keys of the files :meth:`reads` names (the journal key's inputs)."""
        return [
            self._ids.key(ckpt, ckpt.tensors[name].file)
            for ckpt, names in self.reads(unit)
            for name in names
        ]

    def reads(self, unit: Unit) -> list[tuple[Any, list[str]]]:
        """(checkpoint, tensor names) that computing ``unit`` reads, for :class:`InputWatch`."""
        out = []
        for ckpt, side in ((self.base, "base"), (self.tuned, "tuned")):
            names = []
            for pair in unit.pairs:
                ref = getattr(pair, side)
                names.append(ref.info.name)
                if ref.scale is not None:
                    names.append(ref.scale.name)
            out.append((ckpt, names))
        return out

    # -- reading -----------------------------------------------------------------------------
    def fits(self, unit: Unit) -> bool:
        return unit.kind in ("experts", "small") or unit.nbytes <= self.opts.chunk_bytes

    def plan_readahead(self, units: list[Unit], budget: int) -> None:
        """Units in the order they will be loaded; each load advises the kernel to start
        reading the next ``budget`` bytes of them (deeper than the one-unit prefetch queue,
        at no cost in resident memory: page cache only)."""
        self._order = {u: i for i, u in enumerate(units)}
        self._units = units
        self._advised = -1
        self._readahead = budget

    def _advise_after(self, unit: Unit) -> None:
        if unit not in self._order:
            return
        i, ahead = self._order[unit] + 1, 0
        while i < len(self._units) and ahead < self._readahead:
            nxt = self._units[i]
            if i > self._advised:
                for p in nxt.pairs:
                    for ckpt, ref in ((self.base, p.base), (self.tuned, p.tuned)):
                        ckpt.advise(ref.info.name)
                self._advised = i
            ahead += nxt.nbytes
            i += 1

    def load(self, unit: Unit) -> list[tuple[Stored, Stored]] | None:
        """The pairs of a unit that fits the chunk budget, as stored, on the CPU (None: it
        is streamed later)."""
        self._advise_after(unit)
        if not self.fits(unit):
            return None
        return [
            (read_stored(self.base, p.base), read_stored(self.tuned, p.tuned)) for p in unit.pairs
        ]

    def to_device(self, *items: torch.Tensor | Stored) -> list:
        out = [
            t.to(self.device, self.stream)
            if isinstance(t, Stored)
            else to_device(t, self.device, self.stream)
            for t in items
        ]
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return out

    def row_blocks(self, pair: PairedTensor, budget: int) -> Iterator[tuple[int, int]]:
        rows = pair.shape[0] if pair.shape else 1
        per_row = max(1, pair.nbytes // max(rows, 1))
        step = max(1, budget // per_row)
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def base_blocks(self, pair: PairedTensor, budget: int) -> Iterator[torch.Tensor]:
        """W0's row blocks as bf16 (what the spectra read), one at a time: the base cache's
        key of a streamed matrix."""
        for span in self.row_blocks(pair, budget):
            yield read_stored(self.base, pair.base, *span).bf16()

    def blocks(self, pair: PairedTensor, budget: int) -> Iterator[tuple[Stored, Stored]]:
        """Row blocks of a large pair as stored, each read while the previous one is
        computed."""

        def load(span):
            return (
                read_stored(self.base, pair.base, *span),
                read_stored(self.tuned, pair.tuned, *span),
            )

        with Prefetcher(self.row_blocks(pair, budget), load, depth=1) as blocks:
            for _, (w0, w1) in blocks:
                yield tuple(self.to_device(w0, w1))


def compute_unit(streamer: Streamer, unit: Unit, loaded) -> tuple[list[dict], list[str]]:
    """Rows and notes of one unit (``loaded``: what :meth:`Streamer.load` returned), every
    kernel on ``--backend`` (the spectra's and angles' products included)."""
    with linalg.kernel_backend(streamer.opts.backend):
        return _compute_unit(streamer, unit, loaded)


def _compute_unit(streamer: Streamer, unit: Unit, loaded) -> tuple[list[dict], list[str]]:
    opts = streamer.opts
    if unit.kind == "experts":
        sides = [streamer.to_device(s0, s1) for s0, s1 in loaded]
        s0, s1 = [a for a, _ in sides], [b for _, b in sides]
        return expert_rows(list(unit.pairs), [None] * len(unit.pairs), s0, s1, opts, streamer.cache)
    if unit.kind == "small":
        sides = [tuple(streamer.to_device(s0, s1)) for s0, s1 in loaded]
        return small_rows(list(unit.pairs), sides, opts, streamer.cache)
    pair = unit.pairs[0]
    if unit.kind == "stack":
        spans = [None] if loaded is not None else streamer.row_blocks(pair, opts.chunk_bytes // 8)
        rows, notes = [], []
        for span in spans:  # experts [start, stop) of the stack at a time
            if span is None:
                start, (stack0, stack1) = 0, loaded[0]
            else:
                start = span[0]
                stack0 = read_stored(streamer.base, pair.base, *span)
                stack1 = read_stored(streamer.tuned, pair.tuned, *span)
            stack0, stack1 = streamer.to_device(stack0, stack1)
            s0, s1 = stack0.split(), stack1.split()
            experts = list(range(start, start + len(s0)))
            r, n = expert_rows([pair] * len(s0), experts, s0, s1, opts, streamer.cache)
            rows += r
            notes += n
        return rows, notes
    if loaded is not None:
        w0, w1 = streamer.to_device(*loaded[0])
        row, notes = matrix_row(pair, w0, w1, opts, streamer.cache)
        return [row], notes
    budget = opts.chunk_bytes // 4
    base_key = None
    if block_cache_wanted(pair, opts, streamer.cache):
        # The key hashes W0's values: one more read of the base, cheap against its Gram.
        k = opts.subspace_k(min(pair.shape))
        base_key = streamer.cache.key(streamer.base_blocks(pair, budget), "gram_top", k)
    row, notes = block_rows(
        pair, streamer.blocks(pair, budget), opts, streamer.device, streamer.cache, base_key
    )
    return [row], notes


def _check_nonempty(pairing, base, tuned) -> None:
    if not pairing.pairs:
        raise CheckpointError(
            tuned.path, None, f"no tensor name in common with {base.path} (see the prefix rule)"
        )


def run_diff(
    base_path: str | Path,
    tuned_path: str | Path,
    out_dir: str | Path,
    opts: DiffOptions | None = None,
    strict: bool = False,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
    base_cache: str | Path | None = None,
    workers: int | None = None,
) -> dict[str, Any] | None:
    """Diff two checkpoints into ``out_dir``; returns the summary on rank 0 (None elsewhere).
    ``base_cache``: a folder of W0's decompositions (:mod:`paramgeom.engine.base_cache`)
    read where they are and written where not, for later diffs against the same base.
    ``workers``: units computed at once on CPU, each on one thread (None:
    :func:`~paramgeom.engine.pipeline.default_workers`, one per torch thread as memory
    allows; on CUDA one at a time whatever is given); the figures do not depend on it.

    Raises :class:`~paramgeom.checkpoints.errors.CheckpointError` for bad input (the command
    line's exit 2); whatever was finished before the error stays in the journal.
    """
    opts = opts or DiffOptions()
    out = Path(out_dir)
    ctx = distributed.context(opts.device)
    try:
        device = compute_device(opts.device)
        n_workers = resolve_workers(workers, device, opts.chunk_bytes)
        make_output_dir(out)
        cache = None
        if base_cache is not None and opts.spectra and opts.angles:
            make_output_dir(Path(base_cache), "base cache folder")
            cache = BaseCache(base_cache, f"{opts.backend}|{device.type}")
        with open_checkpoint(base_path) as base, open_checkpoint(tuned_path) as tuned:
            pairing = pair_checkpoints(base, tuned)
            _check_nonempty(pairing, base, tuned)
            if strict and (pairing.missing_in_tuned or pairing.missing_in_base):
                first = (pairing.missing_in_tuned or pairing.missing_in_base)[0]
                n = len(pairing.missing_in_tuned) + len(pairing.missing_in_base)
                raise CheckpointError(
                    tuned.path, first, f"--strict: {n} tensor(s) missing on one side"
                )
            units = build_units(pairing.pairs, group_bytes=max(1, opts.chunk_bytes // 8))
            streamer = Streamer(base, tuned, opts, device, cache)
            fingerprint = opts.fingerprint()
            keys = {u: entry_key(u.digest(), streamer.identities(u), fingerprint) for u in units}

            def feed(todo: list[Unit]):
                streamer.plan_readahead(todo, READAHEAD_BYTES)
                with Prefetcher(todo, streamer.load, depth=1) as queue:
                    yield from queue

            done = stream_units(
                "diff", out, ctx, units, keys, feed,
                compute=lambda unit, loaded: compute_unit(streamer, unit, loaded),
                reads=streamer.reads, nbytes=lambda u: u.nbytes, quiet=quiet, workers=n_workers,
                inline=lambda u: u.kind == "small",  # tiny tensors: Python-bound, GIL-bound
            )  # fmt: skip
            if done is None:
                return None
            if say:
                say("writing tables, plots and report")
            notes = list(pairing.notes) + done.notes + (cache.counts.notes if cache else [])
            summary = _write_outputs(
                out, done.rows, notes, pairing, opts, describe_inputs(base), describe_inputs(tuned)
            )
            # Not in the tables (they hold figures only); rank 0's own share when distributed.
            summary["run"] = done.run_facts(ctx.world, n_workers)
            if cache is not None:
                counts = cache.counts
                summary["run"]["base_cache"] = {
                    "folder": str(cache.folder),
                    "hits": counts.hits,
                    "misses": counts.misses,
                    "written": counts.written,
                    "rejected": counts.rejected,
                    "write_error": counts.write_error,
                }
            return summary
    finally:
        ctx.close()


def tuned_labels(paths: list[str | Path]) -> list[str]:
    """Output sub-folder names of several tuned checkpoints: each path's last component
    (``org/name`` of a hub id gives ``name``), made unique by ``-2``, ``-3``, ... in order."""
    labels: list[str] = []
    seen: set[str] = set()
    for p in paths:
        name = Path(str(p).rstrip("/")).name
        base = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name).lstrip(".")
        label, i = base or "tuned", 1
        while label in seen:
            i += 1
            label = f"{base}-{i}"
        seen.add(label)
        labels.append(label)
    return labels


def run_diffs(
    base_path: str | Path,
    tuned_paths: list[str | Path],
    out_dir: str | Path,
    opts: DiffOptions | None = None,
    base_cache: str | Path | None = None,
    use_cache: bool = True,
    strict: bool = False,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> list[dict[str, Any] | None]:
    """Diff every tuned checkpoint against one base, in order: ``out_dir/<label>/`` each
    (:func:`tuned_labels`; ``workers`` as there), with W0's decompositions computed for the
    first and read back for the others from ``base_cache`` (default ``out_dir/base-cache``;
    kept for later runs against the same base; ``use_cache=False``: none). Writes
    ``out_dir/runs.json``: each checkpoint's folder, time and base-cache use. Returns the
    summaries (None on ranks other than 0).

    Fails on the first bad input, as :func:`run_diff` does; rerunning skips what is done.
    """
    opts = opts or DiffOptions()
    out = Path(out_dir)
    make_output_dir(out)
    cache = None
    if use_cache:
        cache = Path(base_cache) if base_cache is not None else out / "base-cache"
    labels = tuned_labels(list(tuned_paths))
    summaries: list[dict[str, Any] | None] = []
    index = []
    for i, (tuned, label) in enumerate(zip(tuned_paths, labels, strict=True)):
        if say:
            say(f"[{i + 1}/{len(labels)}] {tuned} -> {out / label}")
        started = time.perf_counter()
        summary = run_diff(
            base_path, tuned, out / label, opts, strict=strict, quiet=quiet, base_cache=cache,
            workers=workers,
        )  # fmt: skip
        summaries.append(summary)
        if summary is not None:
            index.append(
                {
                    "tuned": str(tuned),
                    "folder": label,
                    "seconds": time.perf_counter() - started,
                    "seconds_streaming": summary["run"]["seconds_streaming"],
                    "base_cache": summary["run"].get("base_cache"),
                }
            )
    if summaries and summaries[0] is not None:
        from paramgeom.report import tables

        tables.write_json({"base": str(base_path), "runs": index}, out / "runs.json")
    return summaries


def _rules(opts: DiffOptions) -> dict[str, Any]:
    rules: dict[str, Any] = dict(RULES)
    rules.update(
        {
            "unchanged": (
                f"|w1 - w0| <= eta * max(|w0|, |w1|) on bf16 values, eta = {opts.rel_tol:g}; "
                "parameter-count weighted over tensors"
            ),
            "eta": opts.rel_tol,
            "atol": opts.atol,
            "rank_k": opts.rank if opts.rank is not None else f"min(m, n) // {RANK_FRACTION}",
            "angles": (
                "principal angles between the top-K singular subspaces of W0 and W1 (K = "
                + (
                    f"{opts.rank}"
                    if opts.rank is not None
                    else f"min(m, n) // {RANK_FRACTION} per matrix, the paper's 512 of 4096"
                )
                + ", at most min(m, n); a side with only K dimensions gets no angles), float64, "
                "sine form below 45 degrees"
                if opts.angles
                else "not computed (--no-angles)"
            ),
            "spectrum": (
                "dW's spectrum exact (float64 Gram) when "
                + (
                    f"min(m, n) <= {opts.exact_threshold}"
                    if opts.exact_threshold is not None
                    else f"min(m, n) <= {EXACT_ALWAYS}, or <= {EXACT_MAX} where "
                    f"{KRYLOV_MIN_BLOCKS} blocks of K + 10 would pass half of min(m, n)"
                )
                + ", else its top-K by the randomized range finder (effective rank over those K)"
            ),
            "spectral_drift": "||s(W1) - s(W0)|| / ||s(W0)|| over the top-K singular values",
        }
    )
    if opts.masks:
        rules["masks"] = (
            "changed entries (failing the bf16 rule) against W0's principal mask (top half of "
            "|rank-64 reconstruction|) and low-magnitude mask (bottom half of |W0|), per "
            "matrix held whole (not for expert batches or row-streamed tensors)"
        )
    return rules


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def unconverged_note(rows: list[dict]) -> list[str]:
    """One note for the matrices whose block Krylov iteration stopped at its block cap
    (``subspace_residual``, the largest relative Ritz residual, above the 1e-6 stop test):
    their angles are not converged."""
    bad = [r for r in rows if (r.get("subspace_residual") or 0.0) > SUBSPACE_TOL]
    if not bad:
        return []
    worst = max(bad, key=lambda r: r["subspace_residual"])
    return [
        f"{len(bad)} of {sum(r.get('subspace_steps') is not None for r in rows)} matrices: "
        f"the top-K block Krylov iteration stopped at its block cap before converging "
        f"(relative Ritz residual up to {worst['subspace_residual']:.1e}, in "
        f"{worst['name']}; the stop test is {SUBSPACE_TOL:g}): their angles are not "
        "converged (column subspace_residual; sin(angle error) <= residual * s_1 / "
        "(s_K - s_K+1)). A spectrum with no gap at K does this; --exact-threshold at or "
        "above min(m, n) gives exact subspaces"
    ]


def whole_space_note(rows: list[dict]) -> list[str]:
    """One note for the matrices with a side of exactly K dimensions: that side's top-K
    "subspace" is the whole space, so its angles are left empty (compute.defined_sides)."""
    bad = []
    for r in rows:
        k = r.get("rank_k")
        if k is None or r.get("stable_rank") is None or "x" not in str(r.get("shape")):
            continue
        m, n = (int(d) for d in r["shape"].split("x"))
        if not all(defined_sides(k, m, n)):
            bad.append(r)
    if not bad:
        return []
    return [
        f"{len(bad)} matrices (e.g. {bad[0]['name']}, {bad[0]['shape']}, K = {bad[0]['rank_k']})"
        ": a side with only K dimensions has the whole space as its top-K subspace (angle 0 "
        "by construction), so that side's angles are empty; the other side's angles and the "
        "drift are computed. A smaller --rank, or the default rule, avoids it"
    ]


def _write_outputs(out, rows, notes, pairing, opts, base_inputs, tuned_inputs) -> dict:
    from paramgeom.report import aggregate, plots, render, tables

    try:
        tables.write_table(rows, DIFF_COLUMNS, out, "tensors")
        notes = notes + unconverged_note(rows) + (whole_space_note(rows) if opts.angles else [])
        summary = aggregate.summarize_diff(rows)
        summary.update(
            {
                "command": "diff",
                "rules": _rules(opts),
                "options": {k: _clean(v) for k, v in asdict(opts).items()},
                "inputs": {"base": base_inputs, "tuned": tuned_inputs},
                "missing_in_tuned": pairing.missing_in_tuned,
                "missing_in_base": pairing.missing_in_base,
                "tied": pairing.tied,
                "notes": notes,
            }
        )
        tables.write_json(summary, out / "summary.json")
        written = plots.plot_diff(rows, out)
        render.write_diff_report(summary, out, written)
    except OSError as exc:
        raise CheckpointError(
            out, None, f"cannot write the outputs ({exc.strerror or exc}); every computed "
            "tensor is in the journal: rerun the same command to write them",
        ) from None  # fmt: skip
    return summary
