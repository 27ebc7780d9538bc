"""``GeometryMonitor``: the paper's update geometry measured inside a training loop.

DESIGN.md "Monitor": every ``every`` steps the monitor compares each watched weight matrix
``W_t`` with a reference snapshot ``W_0`` and records, with paramgeom's kernels,

* the **unchanged fraction** (DESIGN.md "Metrics"; arXiv 2606.07082): both weights as bf16,
  an entry is unchanged when ``|w_t - w_0| <= eta * max(|w_0|, |w_t|)``, ``eta = 1e-3``;
  parameter-count weighted over matrices (:func:`paramgeom.diff_stats`);
* ``||dW_t||_F`` of ``dW_t = bf16(W_t) - bf16(W_0)`` (the same pass, float64 sum);
* the **stable rank** ``srank(dW_t) = ||dW_t||_F^2 / ||dW_t||_2^2`` (Update rank), with
  ``||dW_t||_2 = s_1`` from :func:`paramgeom.linalg.randomized_svd` on the implicit difference
  (``dW`` is never materialised; exact Gram path for ``min(m, n) <= exact_threshold``) and
  the numerator the exact sum of the diff pass;
* **Sim_K** ``= (1/K) ||V_K(t_prev)^T V_K(t)||_F^2`` (Trajectory; paper K = 16) between the
  top-K right singular vectors of this record's ``dW`` and the previous record's;
* the **lock state** (Subspace locking, below) and the over-locking **guardrail**.

Locking online. DESIGN.md defines the lock step against the end of training: the first
step from which ``Sim_K(t, t_end)`` stays above ``lock_threshold`` and ``srank(dW_t)`` stays
below ``K``. ``t_end`` is unknown while training, so the monitor uses consecutive records:
record ``i`` *holds* when ``Sim_K(t_{i-1}, t_i) >= lock_threshold`` and the model-level
stable rank is below ``K`` at both ``t_{i-1}`` and ``t_i``. When ``lock_window`` (default 3)
consecutive records hold, the lock is detected; the lock step is ``t_{i0-1}``, the earlier
record of the first holding pair (the step from which the subspace stayed put). On a run
that locks and stays locked this equals DESIGN's step; detection comes ``lock_window``
records later (at ``every=100``, 300 steps). Three records is the smallest window at which
one chance high-similarity pair (e.g. a plateau of tiny updates) does not fire the action;
a longer window delays it. Consecutive similarities can drift where ``Sim_K(t, t_end)``
would not, so the offline trajectory (``paramgeom trajectory``) stays the reference figure.
Model-level figures are means over matrices: stable rank over matrices whose ``dW`` is
nonzero (0.0 when none changed), Sim_K over matrices where it is defined.

Over-locking guardrail. The monitor flags over-locking when the model-level stable rank
falls below ``overlock_rank`` (default 2.0) at a record before ``overlock_fraction``
(default 0.05) of ``total_steps``. What our own runs say (``paramgeom reproduce --quick``:
the drivers' ``tiny`` model, width 128, lr 3e-6, 300 steps, records every 15 steps, two
seeds): healthy OPD's mean stable rank is 7.7-9.2 at 5% of training, 5.6-6.1 at 10%,
4.1 at 20% and about 3.4 at the end, for SFT and RLVR alike, so the defaults never fire
on a healthy run; they ask for a collapse to nearly one direction (a rank-one-like
update) in the first 5%. The guardrail experiment acted earlier, at stable rank below
1.5 K = 6 before 20% (it fired at 10-15% of training on every seed), and no action
helped held-out accuracy: "stop" -0.045 (the model stopped at 10-15%), "project" -0.004,
"perturb" +0.000 against plain OPD's 0.768, two binomial standard errors 0.037. So the
defaults stay conservative and the drivers' default action is "log"; a rule that fires
on the normal early lock has, in our runs, nothing to fix. Without ``total_steps`` (and
outside the HF callback, which reads ``max_steps``) the guardrail is off and records carry
``over_locking = None``.

Action trigger. ``trigger="lock"`` (default): the action fires once, at lock detection.
``trigger="over_locking"``: it fires once instead at the first record the guardrail flags
(the record that sets ``over_locking_step``), with that record's top-K subspaces; a lock is
then still detected and recorded (``lock_step``), logged at INFO level, and fires nothing.
Why: the paper's practical suggestion ("if stable rank drops too fast, OPD may be
over-locking") needs an intervention to be tested, e.g. stop, project onto or perturb out
of the subspace an over-locking run has collapsed to, and compare with the run left alone.
The step the action fired at is ``action_step`` (monitor attribute and record key).

The action (fires once, at the trigger): a callable ``on_lock(monitor, record)``, or

* ``"log"``: a warning on the ``paramgeom.monitor`` logger;
* ``"stop"``: sets ``monitor.should_stop`` (the HF callback and the drivers' loop stop);
* ``"project"``: gradient hooks ``g <- (g V) V^T`` on every watched matrix, ``V`` its
  locked top-K right singular vectors (the functional-sufficiency projection of DESIGN.md;
  AdamW rescales coordinates, so the *update* is not exactly in the subspace);
* ``"perturb"``: adds ``N = c G (I - V V^T)`` to each watched matrix once, ``G`` standard
  Gaussian, ``c`` such that ``||N||_F = perturb_scale * ||dW_t||_F`` (default 0.1, a tenth of
  that matrix's update so far): noise in the complement of the locked subspace, scaled to
  the update, not to the weight.

Memory: the reference costs 2 bytes per watched parameter (bf16) on ``reference_device``
(default: each weight's own device; ``"cpu"`` keeps it on the host, pinned when CUDA is
present, and copies one matrix at a time to the weight's device at each record). Per matrix
the previous record's ``V`` costs ``8 n K`` bytes (float64), and a record allocates
transiently one bf16 copy of the current matrix and the SVD's ``(m + n) (K + p)`` float64
bases (row-sharded matrices: those of a lockstep batch at once, this rank's rows of at most
:data:`LOCKSTEP_BYTES` of whole bf16 matrices).

Sharded models: a parameter that is a DTensor split by rows over a 1-D mesh (FSDP2's
``fully_shard``, ``Shard(0)``) is measured where it lives: each rank keeps its rows of
``W_0``, computes the counts and sums of its rows (all-reduced over the mesh), and
``sigma_1`` and the top-K subspace come from the one-process method (block Krylov) run on
the rows where they are, :mod:`paramgeom.linalg.distributed` (products local, only ``n x l``
and ``l x l`` matrices all-reduced: no rank gathers a matrix); every rank gets the same
record, equal to the one-process monitor's on the same weights to rounding. The sharded
matrices of a record go in batches (up to :data:`LOCKSTEP_BYTES` of whole bf16 matrices):
one all-reduce for all their counts and sums, and their SVDs in lockstep
(:mod:`paramgeom.linalg.lockstep`: one all-reduce per round of sums, about 13 a batch instead
of 13 a matrix). Replicated
DTensors and DDP's whole parameters are read as they are. Every rank must record at the same
steps (the record is a collective). ``"project"`` and ``"perturb"`` are not available on
sharded weights. Not supported: other placements and meshes (e.g. HSDP's 2-D mesh), ZeRO-3
flat-parameter placeholders, sharded 3-D expert stacks (whole stacks are watched per expert,
with per-stack summaries: ``stack_records``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from paramgeom._chunk import chunk_range
from paramgeom.api.diff_stats import diff_stats
from paramgeom.linalg import randomized_svd
from paramgeom.linalg.distributed import row_sharded_svds
from paramgeom.metrics import sim_k

__all__ = [
    "LOCK_ACTIONS",
    "LOCK_TRIGGERS",
    "OVERLOCK_FRACTION",
    "OVERLOCK_RANK",
    "GeometryMonitor",
    "MonitorConfig",
    "default_modules",
    "log_items",
]

logger = logging.getLogger("paramgeom.monitor")

LOCK_ACTIONS = ("log", "stop", "project", "perturb")
# What fires the action (module docstring): lock detection, or the over-locking guardrail.
LOCK_TRIGGERS = ("lock", "over_locking")
# Guardrail defaults (module docstring: what our runs measured and why these values).
OVERLOCK_RANK = 2.0
OVERLOCK_FRACTION = 0.05

LOG_KEYS = ("unchanged_fraction", "dw_fro", "rel_update", "stable_rank", "sim_k", "locked",
            "lock_step", "over_locking", "action_step", "monitor_s")  # fmt: skip


@dataclass(frozen=True)
class MonitorConfig:
    """Options of :class:`GeometryMonitor` (see its docstring), checked on creation."""

    every: int = 100
    k: int = 16
    lock_threshold: float = 0.9
    lock_window: int = 3
    overlock_rank: float = OVERLOCK_RANK
    overlock_fraction: float = OVERLOCK_FRACTION
    rel_tol: float = 1e-3
    oversample: int = 10
    power_iters: int = 2
    exact_threshold: int = 64
    perturb_scale: float = 0.1
    seed: int = 0
    backend: str = "auto"
    trigger: str = "lock"

    def __post_init__(self) -> None:
        if self.trigger not in LOCK_TRIGGERS:
            raise ValueError(f"trigger must be one of {LOCK_TRIGGERS}, got {self.trigger!r}")
        for name in ("every", "k", "lock_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0.0 < self.lock_threshold <= 1.0:
            raise ValueError(f"lock_threshold must be in (0, 1], got {self.lock_threshold}")
        if not 0.0 <= self.overlock_fraction <= 1.0:
            raise ValueError(f"overlock_fraction must be in [0, 1], got {self.overlock_fraction}")
        if not self.overlock_rank >= 0.0:
            raise ValueError(f"overlock_rank must be >= 0, got {self.overlock_rank}")
        if not (math.isfinite(self.rel_tol) and self.rel_tol >= 0.0):
            raise ValueError(f"rel_tol must be finite and >= 0, got {self.rel_tol}")
        if self.oversample < 0 or self.power_iters < 0 or self.exact_threshold < 0:
            raise ValueError("oversample, power_iters and exact_threshold must be >= 0")
        if not (math.isfinite(self.perturb_scale) and self.perturb_scale >= 0.0):
            raise ValueError(f"perturb_scale must be finite and >= 0, got {self.perturb_scale}")


@dataclass
class _Watched:
    """One monitored matrix: its parameter, bf16 reference and the previous record's V."""

    name: str
    param: torch.nn.Parameter
    ref: torch.Tensor
    # Row-sharded (FSDP2 / DTensor Shard(0)): the process group of its mesh; ``ref`` is then
    # this rank's rows of W_0. None: this rank holds the whole matrix.
    group: Any = None
    # A matrix of a 3-D expert stack ``[E, out, in]`` (MoE): its index; None for a matrix.
    expert: int | None = None
    prev_v: torch.Tensor | None = None
    last_v: torch.Tensor | None = None
    last_fro: float = 0.0
    hooks: list = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix's (global) shape."""
        shape = tuple(self.param.shape)
        return shape[1:] if self.expert is not None else shape  # type: ignore[return-value]

    @property
    def stack(self) -> str:
        """The parameter's name (the stack's, for an expert)."""
        return self.name.rsplit("[", 1)[0] if self.expert is not None else self.name

    def matrix(self) -> torch.Tensor:
        """This rank's part of the matrix, detached (an expert: its slice of the stack)."""
        t = _local(self.param.detach())
        return t[self.expert] if self.expert is not None else t


def default_modules(name: str, module: torch.nn.Module) -> bool:
    """The default selection: every ``nn.Linear`` except the output head and embeddings
    (DESIGN.md "Trajectory": the attention and MLP matrices)."""
    lowered = name.lower()
    return isinstance(module, torch.nn.Linear) and not ("lm_head" in lowered or "embed" in lowered)


def _is_expert_stack(name: str, p: torch.Tensor) -> bool:
    """A 3-D MoE expert stack ``[E, out, in]`` (transformers' fused experts, e.g.
    ``mlp.experts.gate_up_proj``): watched per expert by default."""
    return p.dim() == 3 and "expert" in name.lower()


def _select(model: torch.nn.Module, modules) -> list[tuple[str, torch.nn.Parameter, int | None]]:
    """``(name, parameter, expert)`` of the watched matrices, tied duplicates once: 2-D
    weights (``expert`` None) and each expert of a 3-D stack (``name[e]``)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    chosen: list[tuple[str, torch.nn.Parameter]] = []
    if modules is None or callable(modules):
        pred = default_modules if modules is None else modules
        head = None
        if modules is None and hasattr(model, "get_output_embeddings"):
            head = model.get_output_embeddings()
        for mod_name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if mod is head or not isinstance(w, torch.nn.Parameter) or not pred(mod_name, mod):
                continue
            chosen.append((f"{mod_name}.weight" if mod_name else "weight", w))
        if modules is None:
            chosen += [(n, p) for n, p in params.items() if _is_expert_stack(n, p)]
    else:
        if isinstance(modules, str):
            raise TypeError("modules must be a list of names or a predicate, not one string")
        mods = dict(model.named_modules())
        for name in modules:
            if name in params:
                chosen.append((name, params[name]))
            elif name in mods and isinstance(getattr(mods[name], "weight", None), torch.Tensor):
                chosen.append((f"{name}.weight" if name else "weight", mods[name].weight))
            else:
                raise ValueError(f"modules: {name!r} is neither a parameter nor a module with a "
                                 "weight in this model")  # fmt: skip
    seen: set[int] = set()
    out = []
    for name, p in chosen:
        if id(p) in seen:
            continue  # tied weights: one matrix, reported once
        seen.add(id(p))
        if type(p) not in (torch.nn.Parameter, torch.Tensor):
            _sharding(name, p)  # TypeError unless a DTensor layout the monitor reads
        if p.dim() == 3 and p.numel() > 0:
            if type(p) not in (torch.nn.Parameter, torch.Tensor):
                raise TypeError(f"{name}: a sharded 3-D expert stack; the monitor reads "
                                "whole expert stacks only")  # fmt: skip
            out += [(f"{name}[{e}]", p, e) for e in range(p.shape[0])]
            continue
        if p.dim() != 2 or p.numel() == 0:
            raise ValueError(
                f"{name}: the monitor watches non-empty 2-D weights and 3-D expert stacks, "
                f"got shape {tuple(p.shape)}"
            )
        out.append((name, p, None))
    if not out:
        raise ValueError("no weight matrices selected: pass modules= (names or a predicate)")
    return out


def _is_dtensor(t: object) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _sharding(name: str, p: torch.Tensor):
    """How the monitor reads parameter ``p``: None for a whole matrix on this rank (a plain
    tensor, or a replicated DTensor), else the process group over which its rows are split
    (a DTensor ``Shard(0)`` on a 1-D mesh: FSDP2's layout). Anything else is a TypeError."""
    if type(p) in (torch.nn.Parameter, torch.Tensor):
        return None
    if _is_dtensor(p):
        mesh, placements = p.device_mesh, tuple(p.placements)
        if mesh.ndim == 1 and len(placements) == 1:
            kind = type(placements[0]).__name__
            if kind == "Replicate":
                return None
            if kind == "Shard" and placements[0].dim == 0:
                return mesh.get_group()
        raise TypeError(
            f"{name}: a DTensor with placements {placements} on a {mesh.ndim}-D mesh; the "
            "monitor reads row-sharded (Shard(0), FSDP2's layout) or replicated DTensors on a "
            "1-D mesh"
        )
    raise TypeError(
        f"{name}: a {type(p).__name__} parameter (a tensor subclass other than DTensor); the "
        "monitor reads plain tensors and DTensors"
    )


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (a DTensor's local tensor), else ``t``."""
    return t.to_local() if _is_dtensor(t) else t


def _local_rows(ref: torch.Tensor, p: torch.Tensor, name: str) -> torch.Tensor:
    """This rank's rows of a reference for row-sharded ``p``: a DTensor's own local part, or
    the same rows of a whole matrix (DTensor's split: ``torch.chunk`` along dim 0)."""
    if _is_dtensor(ref):
        return ref.to_local()
    local = p.to_local()
    start, _ = chunk_range(p.shape[0], p.device_mesh.size(), p.device_mesh.get_local_rank())
    rows = ref[start : start + local.shape[0]]
    if rows.shape != local.shape:
        raise ValueError(f"reference {name}: rows [{start}, {start + local.shape[0]}) of "
                         f"{tuple(ref.shape)} do not match this rank's shard "
                         f"{tuple(local.shape)}")  # fmt: skip
    return rows


def _reference_map(reference) -> Mapping[str, torch.Tensor] | None:
    if reference is None or isinstance(reference, Mapping):
        return reference
    if isinstance(reference, torch.nn.Module):
        return dict(reference.named_parameters(remove_duplicate=False))
    raise TypeError(f"reference must be None, a state dict or a module, "
                    f"got {type(reference).__name__}")  # fmt: skip


def _reference_tensor(reference: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in reference:
        raise KeyError(f"reference has no tensor {name!r}")
    t = reference[name]
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"reference[{name!r}] is not a tensor")
    return t


def _stack_row(step: int, stack: str, rows: list[tuple[dict, int, int]]) -> dict[str, Any]:
    """One expert stack's summary of a record: counts and squared norms summed over its
    experts, stable rank and Sim_K averaged over the experts that changed / have one."""
    unchanged = sum(u for _, u, _ in rows)
    numel = sum(n for _, _, n in rows)
    changed = [r["stable_rank"] for r, _, _ in rows
               if r["dw_fro"] > 0 and math.isfinite(r["stable_rank"])]  # fmt: skip
    sims = [r["sim_k"] for r, _, _ in rows if r["sim_k"] is not None]
    return {
        "step": step,
        "stack": stack,
        "n_experts": len(rows),
        "unchanged_fraction": unchanged / numel if numel else math.nan,
        "dw_fro": math.sqrt(sum(r["dw_fro"] ** 2 for r, _, _ in rows)),
        "stable_rank": _mean(changed) if changed else 0.0,
        "sim_k": _mean(sims),
        "experts_changed": len(changed),
    }


LOCKSTEP_BYTES = 1 << 30
"""Most bf16 bytes (of whole matrices, ``2 m n``, summed) of the row-sharded matrices whose
SVDs run in one lockstep batch: each holds its current values' bf16 copy (this rank's rows)
until the batch ends. Decided on the whole shapes, so every rank cuts the batches alike."""

LOCKSTEP_MAX = 256
"""Most matrices in one lockstep batch (one thread each while the batch runs)."""


def _lockstep_batches(watched: list[_Watched], budget: int) -> Iterable[list[_Watched]]:
    """``watched`` in order, cut into batches: a matrix this rank holds whole alone; runs of
    row-sharded matrices of one process group together, up to ``budget`` bf16 bytes of
    whole matrices and :data:`LOCKSTEP_MAX` matrices (at least one)."""
    batch: list[_Watched] = []
    size = 0
    for w in watched:
        nbytes = 2 * w.shape[0] * w.shape[1]
        if batch and (
            w.group is None
            or w.group is not batch[0].group
            or size + nbytes > budget
            or len(batch) >= LOCKSTEP_MAX
        ):
            yield batch
            batch, size = [], 0
        batch.append(w)
        size += nbytes
        if w.group is None:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _k(cfg: MonitorConfig, w: _Watched) -> int:
    """K of ``w``'s top-K subspace: the configured K, at most the matrix's smaller side."""
    return min(cfg.k, *w.shape)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def log_items(record: Mapping[str, Any], prefix: str = "geometry/") -> dict[str, float]:
    """The scalar figures of a model-level record as ``{prefix + key: number}`` for loggers
    (TensorBoard takes numbers only: booleans become 0/1, undefined values are left out)."""
    out: dict[str, float] = {}
    for key in LOG_KEYS:
        v = record.get(key)
        if v is None:
            continue
        out[prefix + key] = float(v) if isinstance(v, bool) else v
    return out


class GeometryMonitor:
    """Unchanged fraction, ``||dW||_F``, stable rank, Sim_K and subspace locking every
    ``every`` steps of a training run (DESIGN.md "Monitor"; definitions in the module
    docstring and DESIGN.md "Metrics", arXiv 2606.07082).

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained; its watched parameters are read in place at each record.
    reference : None, Mapping[str, Tensor] or nn.Module
        ``W_0``. None snapshots ``model`` now; a state dict or module is looked up by
        parameter name. Stored as bf16 (2 bytes per watched parameter).
    every : int
        Record when ``step % every == 0`` (default 100).
    k : int
        K of Sim_K and of the lock rule's ``srank < K`` (paper: 16). Matrices narrower than
        ``k`` use ``min(m, n)``; the rule means something only for widths much above K.
    lock_threshold : float
        Sim_K threshold of the lock rule (DESIGN.md default 0.9).
    on_lock : None, callable or one of ``"log"``, ``"stop"``, ``"project"``, ``"perturb"``
        Action, fired once at the ``trigger``; see the module docstring.
    modules : None, list of str or callable
        Watched weights: None is every ``nn.Linear`` except the output head and embeddings,
        and every 3-D MoE expert stack (a parameter ``[E, out, in]`` with "expert" in its
        name, as transformers' fused experts store them), one matrix per expert;
        a list names modules (their ``.weight``) or parameters; a callable
        ``(module_name, module) -> bool`` selects modules that have a 2-D ``weight``.
    lock_window : int
        Consecutive holding records that detect a lock (default 3).
    total_steps : int, optional
        Length of training, for the lock's and the guardrail's fraction of training.
    overlock_rank, overlock_fraction : float
        The guardrail: flag when the stable rank is below ``overlock_rank``
        before ``overlock_fraction`` of ``total_steps`` (2.0 and 0.05).
    reference_device : None, str or torch.device
        Where the bf16 reference lives (None: beside each weight; ``"cpu"``: on the host).
    rel_tol : float
        eta of the unchanged rule (paper: 1e-3).
    oversample, power_iters, exact_threshold, seed
        :func:`paramgeom.linalg.randomized_svd` settings (10, 2, 64, 0); the test matrix is
        drawn from ``seed`` at every record, so records are deterministic. The exact Gram
        path costs ``m n min(m, n)`` against the range finder's ``~12 m n (K + p)``: on CPU
        the range finder is already 2x faster at 128 x 128 and 5x at 256 x 256, hence the
        low default (pass a larger value to trade time for the exact spectrum).
    perturb_scale : float
        ``"perturb"`` noise norm as a fraction of each matrix's ``||dW_t||_F`` (0.1).
    backend : str
        :func:`paramgeom.diff_stats` backend (``"auto"``).
    trigger : str
        What fires ``on_lock``: ``"lock"`` (default, at lock detection) or
        ``"over_locking"`` (at the first record the guardrail flags; needs ``total_steps``).

    Attributes
    ----------
    records : list of dict
        One model-level dict per record: ``step``, ``fraction`` (of ``total_steps``),
        ``unchanged_fraction``, ``dw_fro`` (over all watched matrices), ``rel_update``
        (``||dW||_F / ||W_0||_F``), ``stable_rank`` and ``sim_k`` (means over matrices),
        ``lock_run`` (consecutive holding records), ``locked``, ``lock_step``,
        ``over_locking``, ``action_step``, ``n_matrices``, ``monitor_s`` (seconds the
        record took).
    matrix_records : list of dict
        Per matrix and record: ``step``, ``name``, ``stack`` and ``expert`` (the 3-D stack's
        name and the expert's index, ``name`` is ``stack[e]``; the name and None for a 2-D
        weight), ``rows``, ``cols``, ``k``,
        ``unchanged_fraction``, ``dw_fro``, ``s1``, ``stable_rank``, ``sim_k``,
        ``nonfinite``.
    stack_records : list of dict
        Per MoE expert stack and record: ``step``, ``stack``, ``n_experts``,
        ``unchanged_fraction`` and ``dw_fro`` over the stack, ``stable_rank`` and ``sim_k``
        averaged over its experts, ``experts_changed``.
    lock_step, lock_detected_step : int or None
        The first lock's step (DESIGN's lock step, online) and the record that detected it.
    over_locking_step : int or None
        The first record the guardrail flagged (it also warns once, ``RuntimeWarning``).
    action_step : int or None
        The record at which the ``on_lock`` action fired (``trigger``): the lock detection
        record or the first over-locking record; None until then.
    subspaces : dict of str to Tensor
        Each matrix's top-K right singular vectors at the last record.
    reference_bytes : int
        Memory of the reference (2 bytes per watched parameter).
    should_stop : bool
        Set by ``on_lock="stop"`` (at the ``trigger``).
    total_s : float
        Seconds spent in records so far (the monitor's whole cost: ``step`` between
        records is a modulo).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        reference=None,
        every: int = 100,
        k: int = 16,
        lock_threshold: float = 0.9,
        on_lock: str | Callable | None = None,
        modules: Iterable[str] | Callable[[str, torch.nn.Module], bool] | None = None,
        *,
        lock_window: int = 3,
        total_steps: int | None = None,
        overlock_rank: float = OVERLOCK_RANK,
        overlock_fraction: float = OVERLOCK_FRACTION,
        reference_device: str | torch.device | None = None,
        rel_tol: float = 1e-3,
        oversample: int = 10,
        power_iters: int = 2,
        exact_threshold: int = 64,
        perturb_scale: float = 0.1,
        seed: int = 0,
        backend: str = "auto",
        trigger: str = "lock",
    ) -> None:
        self.config = MonitorConfig(
            every=every, k=k, lock_threshold=lock_threshold, lock_window=lock_window,
            overlock_rank=overlock_rank, overlock_fraction=overlock_fraction, rel_tol=rel_tol,
            oversample=oversample, power_iters=power_iters, exact_threshold=exact_threshold,
            perturb_scale=perturb_scale, seed=seed, backend=backend, trigger=trigger,
        )  # fmt: skip
        if not (on_lock is None or callable(on_lock) or on_lock in LOCK_ACTIONS):
            raise ValueError(f"on_lock must be None, a callable or one of {LOCK_ACTIONS}, "
                             f"got {on_lock!r}")  # fmt: skip
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be None or an int >= 1, got {total_steps!r}")
        self.model = model
        self.on_lock = on_lock
        self.total_steps = total_steps
        self._watched: list[_Watched] = []
        pin = reference_device is not None and torch.cuda.is_available()
        reference = _reference_map(reference)
        with torch.no_grad():
            for name, p, expert in _select(model, modules):
                stack = name.rsplit("[", 1)[0] if expert is not None else name
                src = p if reference is None else _reference_tensor(reference, stack)
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"reference {name}: shape {tuple(src.shape)} differs from "
                                     f"the model's {tuple(p.shape)}")  # fmt: skip
                group = _sharding(name, p)
                if group is not None and on_lock in ("project", "perturb"):
                    raise ValueError(f"on_lock={on_lock!r} is not supported on sharded weights "
                                     f"({name}); use 'log', 'stop' or a callable")  # fmt: skip
                src = _local_rows(src.detach(), p, name) if group is not None else _local(src)
                local = _local(p)
                if expert is not None:
                    src, local = src[expert], local[expert]
                dev = local.device if reference_device is None else torch.device(reference_device)
                # clone: a bf16 parameter's .to(bf16) would alias the live weights
                ref = src.detach().to(device=dev, dtype=torch.bfloat16, copy=True)
                if pin and ref.device.type == "cpu":
                    ref = ref.pin_memory()  # lets the per-record copy to the GPU overlap
                self._watched.append(_Watched(name, p, ref, group, expert))
        self.records: list[dict[str, Any]] = []
        self.matrix_records: list[dict[str, Any]] = []
        self.stack_records: list[dict[str, Any]] = []
        self.lock_step: int | None = None
        self.lock_detected_step: int | None = None
        self.over_locking_step: int | None = None
        self.action_step: int | None = None
        self.should_stop = False
        self.total_s = 0.0
        self._run = 0
        self._run_start: int | None = None
        self._prev_step: int | None = None
        self._prev_srank: float | None = None

    # -- introspection ------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Parameter names of the watched matrices, in model order."""
        return [w.name for w in self._watched]

    @property
    def reference_bytes(self) -> int:
        """Bytes held by the bf16 reference: 2 per watched parameter."""
        return sum(w.ref.numel() * w.ref.element_size() for w in self._watched)

    @property
    def subspaces(self) -> dict[str, torch.Tensor]:
        """The top-K right singular vectors ``V`` (``(n, K)`` float64, orthonormal columns) of
        each watched matrix's ``dW`` at the last record (the locked subspace after a lock);
        matrices whose ``dW`` was zero or non-finite are absent."""
        return {w.name: w.prev_v for w in self._watched if w.prev_v is not None}

    @property
    def history(self):
        """The model-level records as a ``pandas.DataFrame`` (a ``pyarrow.Table`` when
        pandas is missing)."""
        return _table(self.records)

    @property
    def stack_history(self):
        """Per MoE expert stack and record (``stack_records``) as a table."""
        return _table(self.stack_records)

    @property
    def matrix_history(self):
        """The per-matrix records as a ``pandas.DataFrame`` (or ``pyarrow.Table``)."""
        return _table(self.matrix_records)

    # -- checkpointing ------------------------------------------------------------------

    STATE_VERSION = 1

    def state_dict(self, include_reference: bool = True) -> dict[str, Any]:
        """Everything a resumed run needs to continue this monitor's history and lock
        detection: the records, the lock / guardrail / action state, each matrix's previous
        subspace ``V`` and (``include_reference``) its bf16 reference ``W_0`` (a monitor
        built on a resumed model would otherwise take the trained weights as ``W_0``).

        Plain containers, numbers and CPU tensors only: ``torch.save`` it beside the
        trainer's checkpoint and read it back with ``torch.load(..., weights_only=True)``.
        """
        return {
            "version": self.STATE_VERSION,
            "config": asdict(self.config),
            "names": self.names,
            "shapes": [list(w.shape) for w in self._watched],
            "records": [dict(r) for r in self.records],
            "matrix_records": [dict(r) for r in self.matrix_records],
            "stack_records": [dict(r) for r in self.stack_records],
            "lock_step": self.lock_step,
            "lock_detected_step": self.lock_detected_step,
            "over_locking_step": self.over_locking_step,
            "action_step": self.action_step,
            "should_stop": self.should_stop,
            "total_s": self.total_s,
            "total_steps": self.total_steps,
            "run": self._run,
            "run_start": self._run_start,
            "prev_step": self._prev_step,
            "prev_srank": self._prev_srank,
            "prev_v": [
                None if w.prev_v is None else w.prev_v.detach().cpu() for w in self._watched
            ],
            "reference": (
                [w.ref.detach().cpu() for w in self._watched] if include_reference else None
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output. The watched matrices (names and
        shapes) and the options that define the figures (``k``, ``every``, thresholds,
        tolerance, range-finder settings) must match this monitor's: ``ValueError`` naming
        the first difference otherwise. Nothing is changed unless all of it fits."""
        if not isinstance(state, Mapping) or state.get("version") != self.STATE_VERSION:
            raise ValueError(
                f"not a GeometryMonitor state of version {self.STATE_VERSION} "
                f"(got version {state.get('version') if isinstance(state, Mapping) else None!r})"
            )
        if list(state.get("names", [])) != self.names:
            raise ValueError(
                f"monitor state watches {len(state.get('names', []))} matrices "
                f"({list(state.get('names', []))[:3]}...), this monitor {len(self.names)} "
                f"({self.names[:3]}...)"
            )
        shapes = [list(w.shape) for w in self._watched]
        for name, a, b in zip(self.names, state.get("shapes", []), shapes, strict=False):
            if list(a) != b:
                raise ValueError(f"monitor state: {name} has shape {list(a)}, the model's {b}")
        mine = asdict(self.config)
        theirs = state.get("config", {})
        for key in mine:
            if key != "backend" and theirs.get(key) != mine[key]:
                raise ValueError(
                    f"monitor state was recorded with {key}={theirs.get(key)!r}, this "
                    f"monitor has {key}={mine[key]!r}: its figures would not continue"
                )
        prev_v = list(state.get("prev_v", []))
        refs = state.get("reference")
        if len(prev_v) != len(self._watched) or (
            refs is not None and len(refs) != len(self._watched)
        ):
            raise ValueError("monitor state: one subspace and reference per matrix expected")
        for w, v, r in zip(self._watched, prev_v, refs or [None] * len(prev_v), strict=True):
            if v is not None and (v.dim() != 2 or v.shape[0] != w.shape[1]):
                raise ValueError(f"monitor state: {w.name} subspace of shape {tuple(v.shape)}")
            if r is not None and tuple(r.shape) != tuple(w.ref.shape):
                raise ValueError(f"monitor state: {w.name} reference of shape {tuple(r.shape)}")
        for w, v, r in zip(self._watched, prev_v, refs or [None] * len(prev_v), strict=True):
            w.prev_v = w.last_v = None if v is None else v.to(torch.float64)
            if r is not None:
                w.ref.copy_(r.to(device=w.ref.device, dtype=torch.bfloat16))
        self.records = [dict(r) for r in state.get("records", [])]
        self.matrix_records = [dict(r) for r in state.get("matrix_records", [])]
        self.stack_records = [dict(r) for r in state.get("stack_records", [])]
        self.lock_step = state.get("lock_step")
        self.lock_detected_step = state.get("lock_detected_step")
        self.over_locking_step = state.get("over_locking_step")
        self.action_step = state.get("action_step")
        self.should_stop = bool(state.get("should_stop", False))
        self.total_s = float(state.get("total_s", 0.0))
        if self.total_steps is None:
            self.total_steps = state.get("total_steps")
        self._run = int(state.get("run", 0))
        self._run_start = state.get("run_start")
        self._prev_step = state.get("prev_step")
        self._prev_srank = state.get("prev_srank")

    # -- recording ----------------------------------------------------------------------

    def step(self, step: int, force: bool = False) -> dict[str, Any] | None:
        """Record at ``step`` when ``step % every == 0`` (or ``force``); return the
        model-level record, or None when nothing was recorded. A step already recorded is
        not recorded twice."""
        if step == self._prev_step or not (force or step % self.config.every == 0):
            return None
        return self.record(step)

    @torch.no_grad()
    def record(self, step: int) -> dict[str, Any]:
        """Measure every watched matrix now and append one model-level record."""
        cfg = self.config
        t0 = time.perf_counter()
        unchanged = numel = 0
        sq = sq0 = 0.0
        sranks: list[float] = []
        sims: list[float] = []
        stacks: dict[str, list[tuple[dict, int, int]]] = {}
        for w, row in zip(self._watched, self._measure_all(step), strict=True):
            u, nn = row.pop("_unchanged"), row.pop("_numel")
            unchanged += u
            numel += nn
            sq0 += row.pop("_sq0")
            sq += row["dw_fro"] ** 2
            if row["dw_fro"] > 0 and math.isfinite(row["stable_rank"]):
                sranks.append(row["stable_rank"])
            if row["sim_k"] is not None:
                sims.append(row["sim_k"])
            self.matrix_records.append(row)
            if w.expert is not None:
                stacks.setdefault(w.stack, []).append((row, u, nn))
        for stack, rows in stacks.items():
            self.stack_records.append(_stack_row(step, stack, rows))
        srank = _mean(sranks) if sranks else 0.0
        sim = _mean(sims)
        changed = bool(sranks)
        # Lock rule (module docstring): the pair (previous record, this record) holds.
        holds = (
            sim is not None
            and sim >= cfg.lock_threshold
            and changed
            and srank < cfg.k
            and self._prev_srank is not None
            and 0.0 < self._prev_srank < cfg.k
        )
        if holds:
            if self._run == 0:
                self._run_start = self._prev_step
            self._run += 1
        else:
            self._run = 0
        locked = self._run >= cfg.lock_window
        new_lock = locked and self.lock_step is None
        if new_lock:
            self.lock_step, self.lock_detected_step = self._run_start, step
        frac = step / self.total_steps if self.total_steps else None
        over = None
        if frac is not None:
            over = changed and srank < cfg.overlock_rank and frac < cfg.overlock_fraction
        new_over = bool(over) and self.over_locking_step is None
        fire = self.action_step is None and (new_lock if cfg.trigger == "lock" else new_over)
        if fire:
            self.action_step = step
        rec: dict[str, Any] = {
            "step": step,
            "fraction": frac,
            "unchanged_fraction": unchanged / numel,
            "dw_fro": math.sqrt(sq),
            "rel_update": math.sqrt(sq / sq0) if sq0 > 0 else math.nan,
            "stable_rank": srank,
            "sim_k": sim,
            "lock_run": self._run,
            "locked": locked,
            "lock_step": self.lock_step,
            "over_locking": over,
            "action_step": self.action_step,
            "n_matrices": len(self._watched),
        }
        self._prev_step, self._prev_srank = step, srank
        for w in self._watched:
            w.prev_v = w.last_v
        if new_over:
            self.over_locking_step = step
            msg = (f"paramgeom monitor: possible over-locking at step {step}: mean stable rank "
                   f"{srank:.3g} < {cfg.overlock_rank} before {cfg.overlock_fraction:.0%} of "
                   "training (guardrail)")  # fmt: skip
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        rec["monitor_s"] = time.perf_counter() - t0
        self.total_s += rec["monitor_s"]
        self.records.append(rec)
        # The action runs after prev_v = this record's V: project/perturb use its subspace.
        if fire:
            self._fire(rec)
        elif new_lock:
            logger.info("paramgeom monitor: %s", self._lock_text(rec))
        return rec

    def _measure_all(self, step: int) -> list[dict[str, Any]]:
        """Every watched matrix's row, in order. Row-sharded matrices of one process group
        go in batches (:func:`_lockstep_batches`): their statistics summed over the ranks by
        one all-reduce, their SVDs with their sums coalesced (``row_sharded_svds``: about a
        dozen all-reduces a batch instead of a dozen a matrix)."""
        cfg = self.config
        opts = dict(oversample=cfg.oversample, power_iters=cfg.power_iters, seed=cfg.seed,
                    exact_threshold=cfg.exact_threshold)  # fmt: skip
        rows: list[dict[str, Any]] = []
        for batch in _lockstep_batches(self._watched, LOCKSTEP_BYTES):
            got = [self._stats(w) for w in batch]
            group = batch[0].group
            if group is not None:  # this rank's rows: the counts and sums of all ranks
                import torch.distributed as dist

                # On the weights' device: NCCL groups reduce only device tensors.
                tot = torch.tensor([t for _, _, t in got], dtype=torch.float64,
                                   device=got[0][1].device)  # fmt: skip
                dist.all_reduce(tot, group=group)
                got = [(ref, cur, t) for (ref, cur, _), t in zip(got, tot.tolist(), strict=True)]
            # A spectrum where dW is finite (no non-finite value in W_1) and not zero.
            wanted = [i for i, (_, _, t) in enumerate(got) if t[4] == 0 and t[2] > 0]
            problems = [(got[i][0], got[i][1], _k(cfg, batch[i]), batch[i].shape[0])
                        for i in wanted]  # fmt: skip
            if group is None:
                found = [randomized_svd(ref, cur, k, **opts)[1:] for ref, cur, k, _ in problems]
                found = [(s, vh.T.contiguous()) for s, vh in found]
            else:
                found = row_sharded_svds(problems, group, **opts)
                if failed := next((r for r in found if isinstance(r, Exception)), None):
                    raise failed  # every rank raises alike
            spectra = dict(zip(wanted, found, strict=True))
            rows += [self._row(w, step, got[i][2], spectra.get(i)) for i, w in enumerate(batch)]
        return rows

    def _stats(self, w: _Watched) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """``(ref, cur, [unchanged, numel, sum dW^2, sum W_0^2, non-finite in W_1])`` of this
        rank's part of ``w``: the bf16 reference and current values and their statistics."""
        p = w.matrix()
        ref = w.ref if w.ref.device == p.device else w.ref.to(p.device, non_blocking=True)
        # The paper's rule compares bf16 values: cast the (fp32 master) weights like the ref.
        cur = p.to(torch.bfloat16)
        st = diff_stats(ref, cur, rel_tols=(self.config.rel_tol,), backend=self.config.backend)
        tot = [st.n_within_rel[0], st.numel, st.sum_sq_delta, st.sum_sq_w0, st.n_nonfinite_w1]
        return ref, cur, [float(x) for x in tot]

    def _row(
        self, w: _Watched, step: int, tot: list[float], spectrum: tuple | None
    ) -> dict[str, Any]:
        """``w``'s row from its statistics ``tot`` (:meth:`_stats`, over all ranks) and its
        top-K ``(S, V)`` (None: ``dW = 0`` or non-finite); keeps V for the next Sim_K."""
        unchanged, numel, bad = int(tot[0]), int(tot[1]), int(tot[4])
        sq, sq0 = tot[2], tot[3]
        m, n = w.shape
        kk = _k(self.config, w)
        fro = math.sqrt(sq)
        s1, srank, sim, v = 0.0, 0.0, None, None
        if bad:
            srank = math.nan  # no spectrum of a non-finite update; counted, never a crash
        elif spectrum is not None:
            s, v = spectrum
            s1 = float(s[0])
            srank = sq / s1**2 if s1 > 0 else 0.0
            if w.prev_v is not None:
                sim = sim_k(w.prev_v, v, kk)
        w.last_v, w.last_fro = v, fro
        return {
            "step": step, "name": w.name, "stack": w.stack, "expert": w.expert,
            "rows": m, "cols": n, "k": kk,
            "unchanged_fraction": unchanged / numel, "dw_fro": fro, "s1": s1,
            "stable_rank": srank, "sim_k": sim, "nonfinite": bad,
            "_unchanged": unchanged, "_numel": numel, "_sq0": sq0,
        }  # fmt: skip

    # -- lock actions -------------------------------------------------------------------

    def _lock_text(self, rec: dict[str, Any]) -> str:
        where = f"subspace locked at step {self.lock_step} (detected at step {rec['step']}"
        if rec["fraction"] is not None and self.total_steps:
            where += f", {self.lock_step / self.total_steps:.1%} of training"
        return where + f"; Sim_K {rec['sim_k']:.3f}, stable rank {rec['stable_rank']:.2f})"

    def _fire(self, rec: dict[str, Any]) -> None:
        if self.config.trigger == "lock":
            where = self._lock_text(rec)
        else:
            where = (f"over-locking flagged at step {rec['step']} ({rec['fraction']:.1%} of "
                     f"training; stable rank {rec['stable_rank']:.2f} < "
                     f"{self.config.overlock_rank})")  # fmt: skip
        action = self.on_lock
        if action is None:
            logger.info("paramgeom monitor: %s", where)
        elif callable(action):
            action(self, rec)
        elif action == "log":
            logger.warning("paramgeom monitor: %s", where)
        elif action == "stop":
            self.should_stop = True
            logger.warning("paramgeom monitor: %s; stopping", where)
        elif action == "project":
            n = self.project_gradients()
            logger.warning("paramgeom monitor: %s; projecting gradients of %d matrices", where, n)
        elif action == "perturb":
            n = self.perturb()
            logger.warning("paramgeom monitor: %s; perturbed %d matrices", where, n)

    def project_gradients(self) -> int:
        """Register ``g <- (g V) V^T`` gradient hooks on every watched matrix that has a
        top-K subspace at the last record; returns how many. :meth:`remove_hooks` undoes."""
        count = 0
        for w in self._watched:
            if w.prev_v is None or w.hooks:
                continue
            v = w.prev_v.to(device=w.param.device, dtype=w.param.dtype)
            if w.expert is None:
                hook = lambda g, v=v: (g @ v) @ v.T  # noqa: E731
            else:

                def hook(g, v=v, e=w.expert):
                    g = g.clone()
                    g[e] = (g[e] @ v) @ v.T
                    return g

            w.hooks.append(w.param.register_hook(hook))
            count += 1
        return count

    def remove_hooks(self) -> None:
        """Remove the gradient projection hooks."""
        for w in self._watched:
            for h in w.hooks:
                h.remove()
            w.hooks.clear()

    @torch.no_grad()
    def perturb(self, scale: float | None = None) -> int:
        """Add ``N = c G (I - V V^T)`` to every watched matrix with a top-K subspace at the
        last record: ``G`` standard Gaussian (seeded), ``c`` such that ``||N||_F = scale *
        ||dW_t||_F`` of that matrix (``scale`` defaults to ``perturb_scale``). Returns how
        many matrices were perturbed."""
        scale = self.config.perturb_scale if scale is None else float(scale)
        count = 0
        for i, w in enumerate(self._watched):
            if w.prev_v is None or w.last_fro == 0.0:
                continue
            p = w.param if w.expert is None else w.param[w.expert]
            # Drawn on the weight's device in fp32: no host-side full-size temporary.
            gen = torch.Generator(device=p.device).manual_seed(self.config.seed + 1 + i)
            v = w.prev_v.to(device=p.device, dtype=torch.float32)
            g = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            noise = g - (g @ v) @ v.T
            norm = float(torch.linalg.vector_norm(noise))
            if norm == 0.0:
                continue
            p.add_((noise * (scale * w.last_fro / norm)).to(p.dtype))
            count += 1
        return count


def _table(rows: list[dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        try:
            import pyarrow as pa
        except ImportError:
            raise ImportError("monitor history needs pandas or pyarrow") from None
        return pa.Table.from_pylist(rows)
    return pd.DataFrame(rows)
