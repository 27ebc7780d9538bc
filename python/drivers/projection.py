"""Gradient projection for the functional sufficiency test.

DESIGN.md "Metrics", Functional sufficiency (arXiv 2606.07082): train with each weight
matrix's gradient projected onto the top-k (paper: k = 16) right singular subspace of the
update ``dW = W_ref - W_0`` taken at about 20% of an unconstrained run,
``g <- g V_k V_k^T``, and compare task accuracy with the unconstrained run.

``V_k`` comes from :func:`paramgeom.linalg.randomized_svd` on the implicit difference (exact
Gram path for these widths). The projected matrices are the weights of every
``torch.nn.Linear`` except the output embedding (in a Llama: q, k, v, o, gate, up, down);
embeddings, ``lm_head`` and norms train unconstrained (``freeze_others`` zeroes their
gradients instead).

AdamW rescales each coordinate, so a projected gradient does not give a projected update.
``mode="grad"`` is the test as the paper states it (the gradient is projected);
``mode="update"`` also projects each optimiser step, ``W <- W_prev + (W - W_prev) V V^T``,
so ``W - W_0`` of every projected matrix stays in the row space of ``V_k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from paramgeom.drivers.errors import DriverError
from paramgeom.drivers.loop import saved_steps
from paramgeom.linalg import randomized_svd

__all__ = [
    "GradientProjector",
    "build_projector",
    "projection_targets",
    "resolve_reference",
]


def projection_targets(model: torch.nn.Module) -> list[str]:
    """Parameter names of the matrices that get projected: the weight of every
    ``nn.Linear`` except the output embedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def resolve_reference(path: Path, at: float) -> tuple[Path | None, Path, int | None]:
    """Where ``dW`` is taken from: ``(base, checkpoint, step)``.

    ``path`` is either a run folder holding ``checkpoint-<step>`` folders (the base is its
    ``checkpoint-0`` and the checkpoint the saved step nearest ``at`` times its last step,
    ties to the earlier) or a single model folder (base ``None``: the caller's starting
    weights; ``step`` is then ``None``).
    """
    path = Path(path)
    if not path.is_dir():
        raise DriverError(f"--project-grad-from: folder not found: {path}")
    if (path / "config.json").is_file():
        return None, path, None
    steps = saved_steps(path)
    if 0 not in steps or len(steps) < 2:
        raise DriverError(
            f"--project-grad-from {path}: need a model folder or a run folder with "
            f"checkpoint-0 and a later checkpoint-<step> (found {steps or 'none'})"
        )
    if not 0.0 < at <= 1.0:
        raise DriverError(f"--project-at must be in (0, 1], got {at}")
    later = [s for s in steps if s > 0]
    target = at * later[-1]
    step = min(later, key=lambda s: (abs(s - target), s))
    return path / "checkpoint-0", path / f"checkpoint-{step}", step


@dataclass
class GradientProjector:
    """Projects gradients (and, in ``update`` mode, optimiser steps) of ``params`` onto the
    row spaces of ``bases`` (name -> ``(n, k)`` orthonormal columns, ``n`` the matrix's
    input width): ``g <- g V V^T``.

    The loop calls :meth:`before_step` after ``backward`` and :meth:`after_step` after the
    optimiser step.
    """

    params: dict[str, torch.nn.Parameter]
    bases: dict[str, torch.Tensor]
    mode: str = "grad"
    others: list[torch.nn.Parameter] = field(default_factory=list)
    freeze_others: bool = False
    _prev: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("grad", "update"):
            raise ValueError(f"projection mode must be 'grad' or 'update', got {self.mode!r}")

    @torch.no_grad()
    def project_grads(self) -> None:
        """``g <- (g V) V^T`` for every projected matrix (two thin products)."""
        for name, p in self.params.items():
            if p.grad is not None:
                v = self.bases[name]
                p.grad.copy_((p.grad @ v) @ v.T)
        if self.freeze_others:
            for p in self.others:
                if p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def before_step(self) -> None:
        self.project_grads()
        if self.mode == "update":
            self._prev = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def after_step(self) -> None:
        if self.mode != "update":
            return
        for name, p in self.params.items():
            v, prev = self.bases[name], self._prev[name]
            p.copy_(prev + ((p - prev) @ v) @ v.T)
        self._prev = {}

    @torch.no_grad()
    def residual(self) -> float:
        """Largest ``||g - g V V^T||_F / ||g||_F`` over the projected gradients (0 when all
        gradients lie in their subspaces; a diagnostic for tests)."""
        worst = 0.0
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g = p.grad.double()
            v = self.bases[name].double()
            norm = float(g.norm())
            if norm > 0:
                worst = max(worst, float((g - (g @ v) @ v.T).norm()) / norm)
        return worst


def build_projector(
    model: torch.nn.Module,
    base_state: dict[str, torch.Tensor],
    ref_state: dict[str, torch.Tensor],
    k: int = 16,
    mode: str = "grad",
    freeze_others: bool = False,
    seed: int = 0,
) -> tuple[GradientProjector, dict]:
    """A :class:`GradientProjector` for ``model`` from the top-``k`` right singular vectors
    of ``ref_state[name] - base_state[name]`` for each :func:`projection_targets` matrix
    (``k`` is capped at ``min(m, n)``).

    Returns the projector and a summary: matrices projected, ``k`` used, and how many
    reference updates were zero (their subspace is an arbitrary orthonormal completion).
    """
    if k < 1:
        raise DriverError(f"--project-k must be >= 1, got {k}")
    named = dict(model.named_parameters())
    targets = projection_targets(model)
    params, bases, zero = {}, {}, []
    for name in targets:
        if name not in base_state or name not in ref_state:
            raise DriverError(f"--project-grad-from: reference has no tensor {name}")
        p = named[name]
        w0, w1 = base_state[name], ref_state[name]
        if w0.shape != p.shape or w1.shape != p.shape:
            raise DriverError(
                f"--project-grad-from: {name} has shape {tuple(w1.shape)} in the reference "
                f"but {tuple(p.shape)} in the model"
            )
        kk = min(k, *p.shape)
        _, s, vh = randomized_svd(w0.float(), w1.float(), kk, seed=seed)
        if float(s[0]) == 0.0:
            zero.append(name)
        bases[name] = vh.T.to(device=p.device, dtype=p.dtype).contiguous()
        params[name] = p
    others = [p for n, p in named.items() if n not in params and p.requires_grad]
    projector = GradientProjector(params, bases, mode, others, freeze_others)
    summary = {
        "matrices": len(params),
        "k": k,
        "mode": mode,
        "freeze_others": freeze_others,
        "zero_updates": zero,
    }
    return projector, summary
