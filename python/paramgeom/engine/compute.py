"""The figures of one unit of work: per-tensor rows of ``paramgeom diff``.

Everything goes through the public API (``paramgeom.diff_stats``, ``paramgeom.linalg``; the
Grams of streamed matrices by ``linalg.GramSum``); DESIGN.md "Metrics" defines every column
(engine/schema.py).
Three shapes of work:

- a matrix that fits the chunk budget: fused statistics, dW's spectrum (exact through the
  Gram where :meth:`DiffOptions.exact_spectrum` says so, else the top-K by the randomized
  range finder), and the top-K subspace rotation of W0 -> W1;
- a tensor larger than the chunk budget: row blocks, statistics summed over blocks and the
  three Grams (of dW, W0, W1) accumulated over them (right subspaces only: the left ones
  would need the whole tensor again);
- many expert matrices: statistics per matrix, spectra and rotations batched over experts
  (small ones; from ``min(m, n) >= PER_MATRIX_MIN_P`` one matrix at a time, as above).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

import paramgeom
from paramgeom import linalg, metrics
from paramgeom.checkpoints.pairing import PairedTensor
from paramgeom.engine.base_cache import BaseCache
from paramgeom.engine.loader import Stored, stored_stats_args
from paramgeom.linalg.batched import batched_top_bases
from paramgeom.linalg.subspaces import TopSubspaces
from paramgeom.results import DiffStats

__all__ = [
    "EXACT_ALWAYS",
    "EXACT_MAX",
    "KRYLOV_MIN_BLOCKS",
    "PER_MATRIX_MIN_P",
    "DiffOptions",
    "base_row",
    "block_cache_wanted",
    "block_rows",
    "expert_rows",
    "matrix_row",
    "small_rows",
    "stats_fields",
]


PER_MATRIX_MIN_P = 256
"""Expert matrices (and same-shape small matrices) whose smaller dimension is at least this
are computed one at a time (:func:`matrix_row`: Grams, LAPACK's subset solver for the top-K
window) instead of batched (batched Grams and full eigendecompositions): measured on the
2-core VM, one thread, per matrix: 1536 x 4096 3.9 vs 6.9 s, 512 x 2048 0.37 vs 0.46 s,
256 x 1024 0.055 vs 0.094 s, 128 x 512 0.013 s either way, 64 x 256 0.006 vs 0.003 s."""

RANK_FRACTION = 8
"""Default K of the subspaces is ``min(m, n) // RANK_FRACTION`` (arXiv 2606.07082: K = 512
for 4096-wide matrices)."""


EXACT_ALWAYS = 4096
"""Matrices with ``min(m, n)`` at most this take the exact Gram path whatever K is
(DESIGN.md's default threshold)."""

EXACT_MAX = 16384
"""Widest Gram the default rule computes exactly (2.1 GB in float64; a matrix read in row
blocks holds three): above it the block Krylov path runs whatever K is, and a matrix read in
row blocks gets statistics only."""

KRYLOV_MIN_BLOCKS = 4
"""Above :data:`EXACT_ALWAYS` the default rule takes the exact path where the block Krylov
basis (``K + 10`` columns a block) would pass half of ``min(m, n)``, where it hands over
to the exact path anyway, within this many blocks: it can then only win by converging in
fewer, which spectra without a gap at K never do. Measured at the default K = min(m, n) / 8
(one worker, the AVX-512 VM): 6144 x 6144 Gaussian 112.6 s against 51.3 s exact, and 1.74
against 1.01 GB peak; a decaying spectrum (singular values ~ i^-0.5) 223.0 against 151.6 s;
12288 x 12288 Gaussian 807 against 586 s. A small ``--rank`` keeps Krylov (K = 64 of 12288:
a fraction of the exact Grams' cost)."""


@dataclass(frozen=True)
class DiffOptions:
    """What ``paramgeom diff`` computes. ``rank``: K of the subspaces, or None for the rule
    of :meth:`subspace_k` (one eighth of the smaller dimension, the paper's 512 of 4096);
    ``exact_threshold``: largest ``min(m, n)`` whose spectrum is computed exactly, or None
    for the rule of :meth:`exact_spectrum`; ``chunk_bytes``: a pair larger than this is read
    in row blocks."""

    rel_tol: float = 1e-3
    atol: float = 1e-5
    rank: int | None = None
    angles: bool = True
    spectra: bool = True
    exact_threshold: int | None = None
    chunk_bytes: int = 1 << 30
    backend: str = "auto"
    device: str = "cpu"
    masks: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("rank (--rank)", self.rank is None or self.rank >= 1, ">= 1"),
            (
                "exact_threshold (--exact-threshold)",
                self.exact_threshold is None or self.exact_threshold >= 0,
                ">= 0",
            ),
            ("chunk_bytes (--chunk-bytes)", self.chunk_bytes >= 1, ">= 1"),
            ("rel_tol (--rel-tol)", 0 <= self.rel_tol <= 1, "in [0, 1]"),  # also refuses NaN
            ("atol (--atol)", 0 <= self.atol < math.inf, "finite and >= 0"),
        )
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name.split()[0])}")

    def subspace_k(self, p: int) -> int:
        """K of the top-K subspaces of a matrix whose smaller dimension is ``p``: the given
        ``rank``, else ``p // 8`` (at least 1: the paper's 512 of 4096), at most ``p``. A
        side of the matrix with exactly K dimensions has the whole space as its "top-K
        subspace" (angle 0 by construction): that side's angles are not defined
        (:func:`defined_sides`); the other side's, and the drift over all K singular
        values, are."""
        k = self.rank if self.rank is not None else max(1, p // RANK_FRACTION)
        return min(k, p)

    def exact_spectrum(self, side: int, k: int) -> bool:
        """Whether a Gram of ``side`` columns (``min(m, n)``; a matrix read in row blocks:
        its column count) is solved exactly rather than by block Krylov for a top-``k``
        subspace: ``side <= exact_threshold`` when one is given; else up to
        :data:`EXACT_ALWAYS` always, and up to :data:`EXACT_MAX` where ``KRYLOV_MIN_BLOCKS``
        blocks of ``k + 10`` columns would pass half of ``side``."""
        if self.exact_threshold is not None:
            return side <= self.exact_threshold
        if side <= EXACT_ALWAYS:
            return True
        return side <= EXACT_MAX and KRYLOV_MIN_BLOCKS * (k + 10) >= side / 2

    def streamed_grams(self, n: int) -> bool:
        """Whether a matrix of ``n`` columns read in row blocks gets its Grams (and so its
        spectra and right angles): it has no block Krylov path to fall back on, so only the
        Grams' size decides, ``n <= exact_threshold`` when one is given, else ``n <=
        EXACT_MAX``."""
        return n <= (EXACT_MAX if self.exact_threshold is None else self.exact_threshold)

    def fingerprint(self) -> str:
        """Hash of every option that changes a figure (journal entries of other options are
        not reused)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _dtype(t: torch.dtype) -> str:
    return str(t).removeprefix("torch.")


def base_row(pair: PairedTensor, expert: int | None = None) -> dict[str, Any]:
    """Identity columns of a row: one per tensor, or per expert ``expert`` of a 3-D stack."""
    meta = pair.meta
    shape = pair.shape if expert is None else pair.shape[1:]
    return {
        "name": pair.name if expert is None else f"{pair.name}[{expert}]",
        "base_name": pair.base.name,
        "module": meta.module,
        "layer": meta.layer,
        "expert": expert if expert is not None else meta.expert,
        "stack": meta.stack,
        "shape": "x".join(str(d) for d in shape),
        "numel": math.prod(shape),
        "dtype_base": _dtype(pair.base.info.dtype),
        "dtype_tuned": _dtype(pair.tuned.info.dtype),
    }


def _nonfinite_note(row: dict) -> str:
    return f"{row['name']}: {row['n_nonfinite']} NaN/Inf values (excluded from the figures" + (
        "; no spectra)" if "x" in row["shape"] else ")"
    )


def _frac(count: int, n: int) -> float | None:
    return count / n if n else None


def stats_fields(st: DiffStats) -> dict[str, Any]:
    """Statistics columns from fused :func:`paramgeom.diff_stats` totals."""
    n = st.numel
    fd, fb = math.sqrt(st.sum_sq_delta), math.sqrt(st.sum_sq_w0)
    return {
        "unchanged_fraction": _frac(st.n_within_rel[0], n),
        "unchanged_fraction_atol": _frac(st.n_within_abs[0], n),
        "equal_fraction": _frac(st.n_equal, n),
        "n_nonfinite": st.n_nonfinite_w0 + st.n_nonfinite_w1,
        "frobenius_delta": fd,
        "frobenius_base": fb,
        "relative_change": fd / fb if fb > 0 else None,
        "max_abs_delta": st.max_abs_delta if n else None,
    }


SPECTRAL_NORM_LIMIT = 2.0**40
"""Largest Frobenius norm of W0, W1 or dW handed to the spectral routines as stored. Their
products and Grams run in fp32 in places (and dW = W1 - W0 is formed in fp32), so finite
extremes (every value near the bf16 maximum, 3.4e38) would overflow to Inf; above this
norm both inputs are scaled by one power of two first (:func:`spectral_inputs`)."""


def spectral_inputs(
    w0: torch.Tensor, w1: torch.Tensor, stats: list[DiffStats]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(w0, w1, factor)`` for the spectral figures: the inputs as given, or both scaled
    by the power of two ``1 / factor`` that brings the largest Frobenius norm among W0, W1
    and dW (over ``stats``, one per matrix of the batch) to at most
    :data:`SPECTRAL_NORM_LIMIT`. Scaling by a power of two is exact in bf16 for all but
    values 2^-133 below the largest (they round to zero: relative error far below every
    stated accuracy); angles, stable and effective ranks, drift and Sim_K do not depend on
    scale, and singular values are multiplied back by ``factor``."""
    norm = max(
        (math.sqrt(max(st.sum_sq_w0, st.sum_sq_w1, st.sum_sq_delta)) for st in stats),
        default=0.0,
    )
    if norm > SPECTRAL_NORM_LIMIT:
        # norm <= 2^128 (bf16 max) * 2^32 (sqrt of any numel): 2^-shift is a normal float32.
        shift = math.ceil(math.log2(norm / SPECTRAL_NORM_LIMIT))
        return (
            (w0.float() * 2.0**-shift).to(w0.dtype),
            (w1.float() * 2.0**-shift).to(w1.dtype),
            2.0**shift,
        )
    return w0, w1, 1.0


def _stats(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions) -> DiffStats:
    return paramgeom.diff_stats(
        w0, w1, rel_tols=(opts.rel_tol,), abs_tols=(opts.atol,), backend=opts.backend
    )


def stored_stats(s0: Stored, s1: Stored, opts: DiffOptions) -> DiffStats:
    """The statistics of a pair's bf16 values, read from the stored bytes by the kernel
    (rounding or dequantising inside its read) where it can, else from materialised bf16."""
    args = stored_stats_args(s0, s1)
    if args is None:
        return _stats(s0.bf16(), s1.bf16(), opts)
    return paramgeom.diff_stats(
        **args, rel_tols=(opts.rel_tol,), abs_tols=(opts.atol,), backend=opts.backend
    )


def _as_stored(t: Stored | torch.Tensor) -> Stored:
    return t if isinstance(t, Stored) else Stored(t)


def merge_stats(parts: list[DiffStats]) -> DiffStats:
    """Totals of row blocks, summed in block order (deterministic)."""
    first = parts[0]
    return DiffStats(
        numel=sum(p.numel for p in parts),
        n_equal=sum(p.n_equal for p in parts),
        rel_tols=first.rel_tols,
        n_within_rel=tuple(sum(c) for c in zip(*(p.n_within_rel for p in parts), strict=True)),
        abs_tols=first.abs_tols,
        n_within_abs=tuple(sum(c) for c in zip(*(p.n_within_abs for p in parts), strict=True)),
        sum_sq_delta=math.fsum(p.sum_sq_delta for p in parts),
        sum_sq_w0=math.fsum(p.sum_sq_w0 for p in parts),
        sum_sq_w1=math.fsum(p.sum_sq_w1 for p in parts),
        sum_w0w1=math.fsum(p.sum_w0w1 for p in parts),
        max_abs_delta=max(p.max_abs_delta for p in parts),
        n_nonfinite_w0=sum(p.n_nonfinite_w0 for p in parts),
        n_nonfinite_w1=sum(p.n_nonfinite_w1 for p in parts),
        backend=first.backend,
    )


def _rank_fields(s: torch.Tensor, sum_sq_delta: float, exact: bool) -> dict[str, Any]:
    """Stable and effective rank from dW's singular values ``s`` (descending). Stable rank
    uses the exact ``||dW||_F^2`` of the fused statistics, so a top-K spectrum is enough;
    effective rank is over the singular values given (all of them on the exact path)."""
    s1 = float(s[0]) if s.numel() else 0.0
    return {
        "stable_rank": sum_sq_delta / (s1 * s1) if s1 > 0 else 0.0,
        "effective_rank": metrics.effective_rank(s.cpu()),
        "spectrum": "exact" if exact else "randomized",
    }


def defined_sides(k: int, m: int, n: int) -> tuple[bool, bool]:
    """(left, right): whether the top-``k`` left (in R^m) and right (in R^n) subspaces of an
    ``m x n`` matrix are proper subspaces, so that their rotation means something."""
    return k < m, k < n


def _angle_fields(k: int, left, right, drift: float | None) -> dict[str, Any]:
    return {
        "rank_k": k,
        "angle_left_max": left[0] if left else None,
        "angle_left_mean": left[1] if left else None,
        "angle_right_max": right[0] if right else None,
        "angle_right_mean": right[1] if right else None,
        "spectral_drift": drift,
    }


def _drift(s0: torch.Tensor, s1: torch.Tensor) -> float | None:
    d = metrics.spectral_drift(s0.cpu(), s1.cpu())
    return d if math.isfinite(d) else None


def changed_mask(w0: torch.Tensor, w1: torch.Tensor, eta: float) -> torch.Tensor:
    """Entries that fail the paper's rule ``|w1 - w0| <= eta max(|w0|, |w1|)`` (non-finite
    pairs count as changed), on bf16 inputs. For eta < 2^-8 the rule is equality of bf16
    values (see :func:`paramgeom.diff_stats`), compared directly; else in float64."""
    if eta < 2.0**-8:
        return ~(w0 == w1)
    a, b = w0.double(), w1.double()
    return ~((b - a).abs() <= eta * torch.maximum(a.abs(), b.abs()))


def _mask_fields(w0: torch.Tensor, w1: torch.Tensor, opts: DiffOptions) -> dict[str, Any]:
    """DESIGN.md "Metrics", principal / low-magnitude masks (r = 64, alpha = 0.5)."""
    overlap = metrics.principal_mask_overlap(w0, changed_mask(w0, w1, opts.rel_tol))
    clean = [None if math.isnan(v) else v for v in
             (overlap.frac_changed_in_principal, overlap.frac_changed_in_low)]  # fmt: skip
    return {"changed_in_principal": clean[0], "changed_in_low_magnitude": clean[1]}


def _base_subspaces(cache: BaseCache | None, w0: torch.Tensor, width: int, path: str, compute):
    """W0's top-``width`` :class:`TopSubspaces` from the base cache, else ``compute()``d
    (and stored when a cache is given)."""
    m, n = w0.shape
    if cache is None or not cache.wanted(m, n):
        return compute()
    key = cache.key([w0], "top_subspaces", path, width)
    shapes = {"U": (m, width), "S": (width,), "V": (n, width), "info": (3,)}
    got = cache.get(key, shapes)
    if got is not None:
        it, conv, delta = got["info"].tolist()
        u, s, v = (got[x].to(w0.device) for x in ("U", "S", "V"))
        return TopSubspaces(u, s, v, int(it), bool(conv), delta)
    r = compute()
    info = torch.tensor([r.iterations, float(r.converged), r.delta], dtype=torch.float64)
    cache.put(key, {"U": r.U, "S": r.S, "V": r.V, "info": info})
    return r


def matrix_row(
    pair: PairedTensor,
    w0: Stored | torch.Tensor,
    w1: Stored | torch.Tensor,
    opts: DiffOptions,
    cache: BaseCache | None = None,
):
    """Row of a 2-D (or any-D, statistics only) pair held whole in memory: ``w0`` / ``w1``
    as stored (:class:`~paramgeom.engine.loader.Stored`) or as bf16 tensors. ``cache``: W0's
    top-K subspaces are read from (or written to) this base cache."""
    s0, s1 = _as_stored(w0), _as_stored(w1)
    row = base_row(pair)
    st = stored_stats(s0, s1, opts)
    row.update(stats_fields(st))
    if row["n_nonfinite"]:
        return row, [_nonfinite_note(row)]
    if s0.values.dim() != 2 or not opts.spectra or min(s0.values.shape) == 0:
        return row, []
    w0, w1 = s0.bf16(), s1.bf16()  # the spectra read the matrix many times: values once
    if opts.masks:
        row.update(_mask_fields(w0, w1, opts))
    m, n = w0.shape
    p = min(m, n)
    k = opts.subspace_k(p)
    exact = opts.exact_spectrum(p, k)
    w0, w1, factor = spectral_inputs(w0, w1, [st])
    if exact:
        s = linalg.diff_svdvals(w0, w1)
    else:
        _, s, _ = linalg.randomized_svd(w0, w1, k=k, seed=0, exact_threshold=0)
    row.update(_rank_fields(s.double() * factor, st.sum_sq_delta, exact))
    if opts.angles:
        if exact:
            r0 = _base_subspaces(
                cache, w0, k, "exact",
                lambda: linalg.top_subspaces(w0, k, exact_threshold=p),
            )  # fmt: skip
            r1 = linalg.top_subspaces(w1, k, exact_threshold=p)
        else:
            width = min(k + 10, p)
            r0 = _base_subspaces(
                cache, w0, width, "randomized",
                lambda: linalg.top_subspaces(w0, width, exact_threshold=0),
            )  # fmt: skip
            r1 = linalg.top_subspaces(w1, k, init=r0.V)
            row["subspace_steps"] = r0.iterations + r1.iterations
            row["subspace_residual"] = max(r0.delta, r1.delta)
        sides = []
        for ok, a, b in zip(defined_sides(k, m, n), (r0.U, r0.V), (r1.U, r1.V), strict=True):
            pa = linalg.principal_angles(a[:, :k], b[:, :k]) if ok else None
            sides.append((pa.max_deg, pa.mean_deg) if ok else None)
        row.update(_angle_fields(k, sides[0], sides[1], _drift(r0.S[:k], r1.S[:k])))
    return row, []


def block_cache_wanted(pair: PairedTensor, opts: DiffOptions, cache: BaseCache | None) -> bool:
    """Whether :func:`block_rows` of ``pair`` reads W0's top-K right subspace from ``cache``
    (its key then hashes W0's row blocks before the blocks are streamed)."""
    two_d = len(pair.shape) == 2 and min(pair.shape) > 0
    return (
        cache is not None
        and two_d
        and opts.spectra
        and opts.angles
        and opts.streamed_grams(pair.shape[-1])
        and cache.wanted(*pair.shape)
    )


def block_rows(
    pair: PairedTensor,
    blocks,
    opts: DiffOptions,
    device: torch.device,
    cache: BaseCache | None = None,
    base_key: str | None = None,
):
    """Row of a pair too large for the chunk budget, from an iterator of ``(w0, w1)`` row
    blocks as stored (:class:`~paramgeom.engine.loader.Stored`): statistics summed over
    blocks; for a matrix whose column count allows them (:meth:`DiffOptions.streamed_grams`)
    the Grams of dW, W0 and W1 accumulated block by block (:class:`linalg.GramSum`) give
    dW's exact spectrum and the right-subspace rotation (left angles are not computed).
    ``cache`` and ``base_key`` (:meth:`BaseCache.key` of W0's bf16 row blocks): W0's top-K
    pairs are read from the base cache when there, and W0's Gram is then not accumulated."""
    row = base_row(pair)
    parts: list[DiffStats] = []
    two_d = len(pair.shape) == 2 and min(pair.shape) > 0
    n = pair.shape[-1] if pair.shape else 0
    k = opts.subspace_k(min(pair.shape)) if two_d else 0
    grams = two_d and opts.spectra and opts.streamed_grams(n)
    cached = None
    if grams and opts.angles and cache is not None and base_key is not None:
        cached = cache.get(base_key, {"evals": (k,), "V": (n, k)})
    g_d = g_0 = g_1 = None
    if grams:
        g_d, g_0, g_1 = (linalg.GramSum(n, device) for _ in range(3))
    for s0, s1 in blocks:
        parts.append(stored_stats(s0, s1, opts))
        if grams and s0.values.shape[0]:
            w0, w1 = s0.bf16(), s1.bf16()
            g_d.add(w1, w0)
            if opts.angles:
                if cached is None:
                    g_0.add(w0)
                g_1.add(w1)
    st = merge_stats(parts)
    row.update(stats_fields(st))
    notes = []
    if row["n_nonfinite"]:
        return row, [_nonfinite_note(row)]
    if not two_d or not opts.spectra:
        return row, notes
    if not grams:
        return row, [
            f"{pair.name}: read in row blocks and its {n} columns are past the exact "
            "threshold: no spectra (raise --chunk-bytes to compute them)"
        ]
    s = linalg.eigenvalues_desc(g_d.result(), symmetric=True).clamp_min(0).sqrt()
    row.update(_rank_fields(s[: min(pair.shape)], st.sum_sq_delta, True))
    if opts.angles:
        if cached is not None:
            e0, v0 = cached["evals"].to(device), cached["V"].to(device)
        else:
            e0, v0 = linalg.top_eigenpairs(g_0.result(), k, symmetric=True)
            if cache is not None and base_key is not None:
                cache.put(base_key, {"evals": e0, "V": v0})
        e1, v1 = linalg.top_eigenpairs(g_1.result(), k, symmetric=True)
        right = linalg.principal_angles(v0, v1) if defined_sides(k, *pair.shape)[1] else None
        s0, s1 = e0.clamp_min(0).sqrt(), e1.clamp_min(0).sqrt()
        right_fields = (right.max_deg, right.mean_deg) if right is not None else None
        row.update(_angle_fields(k, None, right_fields, _drift(s0, s1)))
        notes.append(f"{pair.name}: read in row blocks: right-subspace angles only")
    return row, notes


def _batched_base(cache: BaseCache | None, a: torch.Tensor, k: int):
    """W0's batched top-``k`` bases of the stack ``a`` (B, m, n): each matrix's from the base
    cache when it is there, the others computed in one batch and stored; None without a cache
    (:func:`linalg.batched_rotation` computes them)."""
    _, m, n = a.shape
    if cache is None or not cache.wanted(m, n):
        return None
    keys = [cache.key([a[j]], "batched_top_bases", k) for j in range(a.shape[0])]
    shapes = {"U": (m, k), "S": (k,), "V": (n, k)}
    got = [cache.get(key, shapes) for key in keys]
    missing = [j for j, hit in enumerate(got) if hit is None]
    if missing:  # only the matrices not in the cache are computed (and stored)
        u, s, v = batched_top_bases(a[missing], k)
        for i, j in enumerate(missing):
            got[j] = {"U": u[i], "S": s[i], "V": v[i]}
            cache.put(keys[j], got[j])
    return tuple(torch.stack([g[x] for g in got]).to(a.device) for x in ("U", "S", "V"))


def expert_rows(
    pairs: list[PairedTensor],
    experts: list[int | None],
    s0: list[Stored],
    s1: list[Stored],
    opts: DiffOptions,
    cache: BaseCache | None = None,
):
    """Rows of a batch of B expert matrices of one shape ``(m, n)``, each side as stored;
    ``pairs[i]`` and ``experts[i]`` say whose matrix ``i`` is (``experts[i]`` set for
    slices of a 3-D stack). Statistics per matrix (fused kernel, on the stored bytes);
    spectra and rotations batched over the experts, on bf16 values materialised once (from
    ``min(m, n) >= PER_MATRIX_MIN_P``: one matrix at a time by :func:`matrix_row`); W0's
    bases from (or into) the base ``cache`` when given."""
    rows, notes, sts = [], [], []
    for i, (pair, e) in enumerate(zip(pairs, experts, strict=True)):
        row = base_row(pair, e)
        sts.append(stored_stats(s0[i], s1[i], opts))
        row.update(stats_fields(sts[-1]))
        rows.append(row)
    B = len(s0)
    m, n = s0[0].values.shape if B else (0, 0)
    p = min(m, n)
    if not opts.spectra or B == 0 or p == 0:
        return rows, notes
    finite = [i for i, r in enumerate(rows) if not r["n_nonfinite"]]
    for i in range(B):
        if rows[i]["n_nonfinite"]:
            notes.append(_nonfinite_note(rows[i]))
    if not finite:
        return rows, notes
    if p >= PER_MATRIX_MIN_P or not opts.exact_spectrum(p, opts.subspace_k(p)):  # one at a time
        for i in finite:
            single, more = matrix_row(pairs[i], s0[i], s1[i], opts, cache)
            rows[i] = {**rows[i], **{k: v for k, v in single.items() if k not in rows[i]}}
            notes += more
        return rows, notes
    a = torch.stack([s0[i].bf16() for i in finite])
    b = torch.stack([s1[i].bf16() for i in finite])
    a, b, factor = spectral_inputs(a, b, [sts[i] for i in finite])
    s = linalg.batched_svdvals(b.double() - a.double()).cpu() * factor
    k = opts.subspace_k(p)
    rot = None
    if opts.angles:
        rot = linalg.batched_rotation(a, b, k, base=_batched_base(cache, a, k))
    left_ok, right_ok = defined_sides(k, m, n)
    if rot is not None:
        lmax, lmean = (t.cpu() for t in rot.degrees("left"))
        rmax, rmean = (t.cpu() for t in rot.degrees("right"))
        drift = rot.spectral_drift().cpu()
    for j, i in enumerate(finite):
        rows[i].update(_rank_fields(s[j], sts[i].sum_sq_delta, True))
        if rot is not None:
            d = float(drift[j])
            rows[i].update(
                _angle_fields(
                    rot.k,
                    (float(lmax[j]), float(lmean[j])) if left_ok else None,
                    (float(rmax[j]), float(rmean[j])) if right_ok else None,
                    d if math.isfinite(d) else None,
                )
            )
    return rows, notes


def small_rows(
    pairs: list[PairedTensor],
    sides: list[tuple[Stored, Stored]],
    opts: DiffOptions,
    cache: BaseCache | None = None,
):
    """Rows of a group of small pairs (engine/plan.py 'small' units), in ``pairs``' order:
    the 2-D matrices of one shape batched as :func:`expert_rows` batches experts (one
    statistics call per matrix, one batched float64 SVD for the spectra and rotations of
    all); everything else (other ranks, empty matrices, ``--masks``, which the batched path
    does not compute) one at a time by :func:`matrix_row`."""
    rows: list[dict | None] = [None] * len(pairs)
    notes: list[str] = []
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (pair, (s0, s1)) in enumerate(zip(pairs, sides, strict=True)):
        shape = tuple(s0.values.shape)
        if len(shape) == 2 and min(shape) > 0 and not opts.masks:
            by_shape.setdefault(shape, []).append(i)
        else:
            rows[i], more = matrix_row(pair, s0, s1, opts, cache)
            notes += more
    for idx in by_shape.values():
        got, more = expert_rows(
            [pairs[i] for i in idx],
            [None] * len(idx),
            [sides[i][0] for i in idx],
            [sides[i][1] for i in idx],
            opts,
            cache,
        )
        for i, row in zip(idx, got, strict=True):
            rows[i] = row
        notes += more
    return rows, notes
