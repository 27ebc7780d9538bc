"""GeometryMonitor state saves and restores with the trainer's checkpoint: a monitor
rebuilt after a restart (on the trained weights, so its own snapshot of ``W_0`` is wrong)
and loaded from ``state_dict`` continues the history and the lock detection exactly as an
uninterrupted monitor does; the state survives ``torch.save`` / ``torch.load(weights_only=
True)``; a state of other matrices or other options is refused, changing nothing."""

from __future__ import annotations

import math

import pytest
import torch

from paramgeom import GeometryMonitor


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(), torch.nn.Linear(64, 40))


def _train_to(model: torch.nn.Module, base: dict, step: int) -> None:
    """The weights at ``step``: a low-rank drift that locks, plus a little noise."""
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if p.dim() != 2:
                continue
            g = torch.Generator().manual_seed(i)
            u = torch.randn(p.shape[0], 2, generator=g)
            v = torch.randn(2, p.shape[1], generator=g)
            noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + step))
            p.copy_(base[name] + 1e-2 * step * (u @ v) / 50 + 1e-5 * noise)


STEPS = list(range(10, 110, 10))


def _strip(records):
    return [{k: v for k, v in r.items() if k != "monitor_s"} for r in records]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            u, v = x[key], y[key]
            if isinstance(u, float) and isinstance(v, float) and math.isnan(u):
                assert math.isnan(v), key
            else:
                assert u == v, (key, u, v)


def test_resumed_monitor_continues_exactly(tmp_path):
    model = _model()
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    kw = dict(every=10, k=2, lock_window=2, total_steps=100)
    whole = GeometryMonitor(model, **kw)
    for s in STEPS:
        _train_to(model, base, s)
        whole.step(s)
    assert whole.lock_step is not None  # the drift locks: the test covers the lock state

    model = _model()
    first = GeometryMonitor(model, **kw)
    for s in STEPS[:4]:
        _train_to(model, base, s)
        first.step(s)
    torch.save(first.state_dict(), tmp_path / "monitor.pt")
    # "Restart": a new model object at the step-40 weights and a new monitor on it (its
    # own reference would be the trained weights), then the saved state.
    model = _model()
    _train_to(model, base, 40)
    resumed = GeometryMonitor(model, **kw)
    resumed.load_state_dict(torch.load(tmp_path / "monitor.pt", weights_only=True))
    assert resumed.step(40) is None  # already recorded
    for s in STEPS[4:]:
        _train_to(model, base, s)
        resumed.step(s)
    _same(_strip(resumed.records), _strip(whole.records))
    _same(_strip(resumed.matrix_records), _strip(whole.matrix_records))
    assert (resumed.lock_step, resumed.lock_detected_step) == (
        whole.lock_step, whole.lock_detected_step,
    )  # fmt: skip
    for name, v in whole.subspaces.items():
        assert torch.equal(resumed.subspaces[name], v)


def test_without_the_reference_the_restart_must_supply_it():
    model = _model()
    mon = GeometryMonitor(model, every=1, k=4)
    state = mon.state_dict(include_reference=False)
    assert state["reference"] is None
    other = GeometryMonitor(model, every=1, k=4)
    other.load_state_dict(state)  # keeps its own reference


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda s: s.update(config={**s["config"], "k": 8}), "k=8"),
        (lambda s: s.update(names=["a"]), "watches 1 matrices"),
        (lambda s: s.update(version=99), "version"),
        (lambda s: s.update(shapes=[[1, 1], [64, 40]]), "has shape [1, 1]"),
        (lambda s: s["reference"].__setitem__(0, torch.zeros(3, 3)), "reference of shape"),
    ],
)
def test_states_that_do_not_fit_are_refused(change, words):
    model = _model()
    mon = GeometryMonitor(model, every=1, k=4)
    mon.step(1)
    state = mon.state_dict()
    change(state)
    other = GeometryMonitor(model, every=1, k=4)
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        other.load_state_dict(state)
    assert other.records == [] and other._prev_step is None  # nothing changed
