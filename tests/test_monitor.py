"""GeometryMonitor (DESIGN.md "Monitor") against float64 oracles and constructed trajectories.

The oracle of every figure is computed here from the same weights in float64: both weights
rounded to bf16 (``paramgeom.reference.decode_ref``, the paper's rule), ``dW`` their exact
difference, its spectrum and right singular vectors from ``torch.linalg.svd`` in float64.
The lock tests build trajectories whose lock step is known by construction: fresh Gaussian
updates (stable rank ~14, Sim_K ~ K/n) before it, and after it ``dW_t = c_t U_t S V^T`` with a
fixed ``V`` and geometric ``S`` (stable rank ~1.6, Sim_K ~ 1).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest
import torch

from paramgeom.monitor import GeometryMonitor, log_items
from paramgeom.reference import decode_ref

SHAPES = [(48, 64), (56, 48)]  # (out, in) of the two Linear layers of TwoLinear


pytestmark = pytest.mark.usefixtures("one_thread")


class TwoLinear(torch.nn.Module):
    def __init__(self, shapes=SHAPES, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(shapes[0][1], shapes[0][0], bias=False, dtype=dtype)
        self.b = torch.nn.Linear(shapes[1][1], shapes[1][0], bias=False, dtype=dtype)
        with torch.no_grad():
            for lin in (self.a, self.b):
                lin.weight.copy_(0.02 * torch.randn(lin.weight.shape, generator=g))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))

    def weights(self):
        return [self.a.weight, self.b.weight]


def orthonormal(n: int, r: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q


def structured(m: int, n: int, v: torch.Tensor, g: torch.Generator, scale=1.0) -> torch.Tensor:
    """``scale * U S V^T`` with fresh left vectors, the given right vectors ``v`` (n x r) and
    geometric singular values ``0.22 * 0.6^i`` (stable rank ~1.56)."""
    r = v.shape[1]
    s = 0.22 * scale * 0.6 ** torch.arange(r, dtype=torch.float64)
    return (orthonormal(m, r, g) * s) @ v.T


def set_weights(model: TwoLinear, w0: list[torch.Tensor], dws: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, a, d in zip(model.weights(), w0, dws, strict=True):
            p.copy_((a.double() + d).to(p.dtype))


def oracle(w0: torch.Tensor, w1: torch.Tensor, k: int):
    """Float64 figures of one matrix: (unchanged count, numel, ||dW||_F^2, srank, V_k)."""
    a, b = decode_ref(w0, "bf16"), decode_ref(w1, "bf16")
    d = b - a
    unchanged = int((d.abs() <= 1e-3 * torch.maximum(a.abs(), b.abs())).sum())
    sq = float(d.square().sum())
    _, s, vh = torch.linalg.svd(d, full_matrices=False)
    srank = sq / float(s[0]) ** 2 if float(s[0]) > 0 else 0.0
    return unchanged, d.numel(), sq, srank, vh[:k].T


def sim(v1: torch.Tensor, v2: torch.Tensor) -> float:
    return float((v1.T @ v2).square().sum()) / v1.shape[1]


# --------------------------------------------------------------------------------------
# figures vs float64


# Tolerances (srank relative, Sim_K absolute): the exact path's spectrum is float64-exact
# (Gram of the bf16 difference); the vectors of the non-Gram side come through one fp32
# product (randomized_svd's stated ~1e-7), which bounds Sim_K on either path.
# The randomized path is an approximation: it is checked on an update whose top-K
# subspace is separated from the tail (noise 1e-4), where HMT's bound makes it accurate.
@pytest.mark.parametrize(
    "shapes,exact_threshold,noise,tol,sim_tol",
    [
        ([(48, 64), (56, 48)], 512, 3e-3, 1e-9, 1e-6),  # exact Gram path
        ([(19, 123), (37, 19)], 512, 3e-3, 1e-9, 1e-6),  # odd sizes
        ([(48, 64), (56, 48)], 0, 1e-4, 1e-6, 1e-5),  # randomized range finder forced
    ],
)
def test_figures_equal_float64(shapes, exact_threshold, noise, tol, sim_tol):
    k = 8
    model = TwoLinear(shapes)
    w0 = [p.detach().clone() for p in model.weights()]
    mon = GeometryMonitor(model, every=5, k=k, exact_threshold=exact_threshold)
    g = torch.Generator().manual_seed(1)
    vs = [orthonormal(p.shape[1], min(p.shape), g) for p in model.weights()]
    prev_v = None
    for step, scale in ((5, 1.0), (10, 1.5)):
        # rank-min(m,n) geometric update plus a Gaussian part: nonzero, with a real tail
        dws = [structured(*p.shape, v, g, scale) + noise * torch.randn(p.shape, generator=g,
               dtype=torch.float64) for p, v in zip(model.weights(), vs, strict=True)]  # fmt: skip
        set_weights(model, w0, dws)
        rec = mon.step(step)
        orc = [
            oracle(a, p.detach(), min(k, *p.shape))
            for a, p in zip(w0, model.weights(), strict=True)
        ]
        assert rec["step"] == step
        assert rec["unchanged_fraction"] == sum(o[0] for o in orc) / sum(o[1] for o in orc)
        assert rec["dw_fro"] == pytest.approx(math.sqrt(sum(o[2] for o in orc)), rel=1e-12)
        ref_sq0 = sum(float(decode_ref(a, "bf16").square().sum()) for a in w0)
        assert rec["rel_update"] == pytest.approx(rec["dw_fro"] / math.sqrt(ref_sq0), rel=1e-12)
        assert rec["stable_rank"] == pytest.approx(sum(o[3] for o in orc) / 2, rel=tol)
        rows = [r for r in mon.matrix_records if r["step"] == step]
        assert [r["name"] for r in rows] == ["a.weight", "b.weight"]
        for r, o in zip(rows, orc, strict=True):
            assert r["stable_rank"] == pytest.approx(o[3], rel=tol)
            assert r["dw_fro"] == pytest.approx(math.sqrt(o[2]), rel=1e-12)
        if prev_v is None:
            assert rec["sim_k"] is None
        else:
            sims = [sim(pv, o[4]) for pv, o in zip(prev_v, orc, strict=True)]
            for r, s in zip(rows, sims, strict=True):
                assert r["sim_k"] == pytest.approx(s, abs=sim_tol)
            assert rec["sim_k"] == pytest.approx(sum(sims) / 2, abs=sim_tol)
        prev_v = [o[4] for o in orc]


def test_zero_update_does_not_crash():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=1, k=4)
    r0 = mon.step(0)
    r1 = mon.step(1)
    for r in (r0, r1):
        assert r["stable_rank"] == 0.0 and r["sim_k"] is None and r["dw_fro"] == 0.0
        assert r["unchanged_fraction"] == 1.0 and not r["locked"]
    assert all(r["stable_rank"] == 0.0 and r["sim_k"] is None for r in mon.matrix_records)
    assert mon.subspaces == {}
    with torch.no_grad():
        model.a.weight.add_(0.01)  # only one matrix changes
    r2 = mon.step(2)
    # rank one up to bf16 rounding of W0 + 0.01
    assert r2["sim_k"] is None and r2["stable_rank"] == pytest.approx(1.0, rel=1e-3)
    assert list(mon.subspaces) == ["a.weight"]
    r3 = mon.step(3)
    assert r3["sim_k"] == pytest.approx(1.0, abs=1e-9)  # the same rank-one update


def test_step_schedule_and_force():
    mon = GeometryMonitor(TwoLinear(), every=10, k=4)
    assert [mon.step(s) is not None for s in range(1, 21)].count(True) == 2
    assert mon.step(20) is None  # already recorded
    assert mon.step(23, force=True)["step"] == 23
    assert [r["step"] for r in mon.records] == [10, 20, 23]


def test_nonfinite_weights_are_counted():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=1, k=4)
    with torch.no_grad():
        model.a.weight.add_(0.01 * torch.randn(model.a.weight.shape))
        model.b.weight.add_(0.01 * torch.randn(model.b.weight.shape))
        model.b.weight[3, 4] = float("nan")
    rec = mon.step(1)
    a, b = [r for r in mon.matrix_records if r["step"] == 1]
    assert b["nonfinite"] == 1 and math.isnan(b["stable_rank"]) and b["sim_k"] is None
    assert a["nonfinite"] == 0 and a["stable_rank"] > 1
    assert rec["stable_rank"] == pytest.approx(a["stable_rank"])  # the NaN matrix is left out


# --------------------------------------------------------------------------------------
# locking


def lock_trajectory(mon: GeometryMonitor, model: TwoLinear, lock_at: int, end: int,
                    unlock_at: int | None = None, every: int = 10):  # fmt: skip
    """Record steps every..end: Gaussian updates before ``lock_at`` (and from ``unlock_at``),
    a fixed right subspace (rank 12, geometric spectrum) in between. Returns the weights as
    set before the last record (a lock action may change them after)."""
    g = torch.Generator().manual_seed(2)
    w0 = [p.detach().clone() for p in model.weights()]
    vs = [orthonormal(p.shape[1], 12, g) for p in model.weights()]
    for step in range(every, end + 1, every):
        grow = step / end
        if step < lock_at or (unlock_at is not None and step >= unlock_at):
            dws = [0.005 * torch.randn(p.shape, generator=g, dtype=torch.float64)
                   for p in model.weights()]  # fmt: skip
        else:
            dws = [
                structured(*p.shape, v, g, grow) for p, v in zip(model.weights(), vs, strict=True)
            ]
        set_weights(model, w0, dws)
        last = [p.detach().clone() for p in model.weights()]
        mon.step(step)
    return last


def test_lock_detected_at_known_step():
    calls = []
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock=lambda m, r: calls.append(r["step"]),
                          total_steps=200)  # fmt: skip
    lock_trajectory(mon, model, lock_at=50, end=150, unlock_at=130)
    by_step = {r["step"]: r for r in mon.records}
    assert all(by_step[s]["stable_rank"] > 8 for s in (10, 20, 30, 40))
    assert all(by_step[s]["sim_k"] < 0.5 for s in (20, 30, 40, 50))
    assert all(by_step[s]["stable_rank"] < 2 and by_step[s]["sim_k"] > 0.99
               for s in range(60, 130, 10))  # fmt: skip
    assert [by_step[s]["lock_run"] for s in range(50, 140, 10)] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert [s for s, r in by_step.items() if r["locked"]] == [80, 90, 100, 110, 120]
    assert mon.lock_step == 50 and mon.lock_detected_step == 80
    assert calls == [80]  # fires once, not again while locked nor after the unlock
    assert by_step[80]["lock_step"] == 50 and by_step[70]["lock_step"] is None
    assert by_step[150]["lock_step"] == 50 and not by_step[150]["locked"]
    assert not any(r["over_locking"] for r in mon.records)  # srank ~1.6 only after 25%


def test_lock_window_one():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, lock_window=1)
    lock_trajectory(mon, model, lock_at=50, end=80)
    assert mon.lock_step == 50 and mon.lock_detected_step == 60


def test_on_lock_stop_and_log(caplog):
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="stop")
    lock_trajectory(mon, model, lock_at=50, end=70)
    assert not mon.should_stop  # two holding records: not yet
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="stop")
    lock_trajectory(mon, model, lock_at=50, end=80)
    assert mon.should_stop

    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="log", total_steps=100)
    with caplog.at_level(logging.WARNING, logger="paramgeom.monitor"):
        lock_trajectory(mon, model, lock_at=50, end=80)
    assert "locked at step 50 (detected at step 80, 50.0% of training" in caplog.text
    assert not mon.should_stop


def test_on_lock_project():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="project")
    x = torch.randn(16, SHAPES[0][1], generator=torch.Generator().manual_seed(3))

    def grads():
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.double() for p in model.weights()]

    lock_trajectory(mon, model, lock_at=50, end=80)  # detected at 80: hooks installed
    projected = grads()
    mon.remove_hooks()
    free = grads()
    for name, g0, g1 in zip(mon.names, free, projected, strict=True):
        v = mon.subspaces[name]
        assert v.shape == (g1.shape[1], 8)
        # g <- g V V^T, with V cast to the fp32 parameter dtype
        assert float((g1 - (g0 @ v) @ v.T).norm()) < 1e-6 * float(g1.norm())
        assert float((g0 - (g0 @ v) @ v.T).norm()) > 0.5 * float(g0.norm())  # not trivial
    assert mon.project_gradients() == 2
    assert all(torch.equal(a, b) for a, b in zip(grads(), projected, strict=True))


def test_on_lock_perturb():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="perturb", perturb_scale=0.1)
    last = lock_trajectory(mon, model, lock_at=50, end=80)  # detected at 80: perturbed then
    rows = {r["name"]: r for r in mon.matrix_records if r["step"] == 80}
    for name, p, w in zip(mon.names, model.weights(), last, strict=True):
        noise = p.detach().double() - w.double()
        v = mon.subspaces[name]
        assert float(noise.norm()) == pytest.approx(0.1 * rows[name]["dw_fro"], rel=1e-5)
        assert float((noise @ v).norm()) < 1e-5 * float(noise.norm())  # in the complement
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, on_lock="perturb")
    last = lock_trajectory(mon, model, lock_at=50, end=70)  # not detected: untouched
    assert all(torch.equal(a, b) for a, b in zip(last, model.weights(), strict=True))


def test_overlocking_guardrail():
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, total_steps=1000)
    with torch.no_grad():
        model.a.weight.add_(0.01)  # rank one: stable rank 1 at 1% of training
        with pytest.warns(RuntimeWarning, match="over-locking"):
            rec = mon.step(10)
    assert rec["over_locking"] is True and mon.over_locking_step == 10
    assert rec["fraction"] == pytest.approx(0.01)
    mon = GeometryMonitor(TwoLinear(), every=10, k=8)
    with torch.no_grad():
        mon.model.a.weight.add_(0.01)
    assert mon.step(10)["over_locking"] is None  # no total_steps: guardrail off
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, total_steps=100)
    with torch.no_grad():
        model.a.weight.add_(0.01)
    assert mon.step(10)["over_locking"] is False  # 10% is past the 5% window


# --------------------------------------------------------------------------------------
# selection, reference, outputs


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(11, 8)
        self.q_proj = torch.nn.Linear(8, 8)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 24), torch.nn.Linear(24, 8))
        self.norm = torch.nn.LayerNorm(8)
        self.lm_head = torch.nn.Linear(8, 11, bias=False)
        self.tied = torch.nn.Linear(8, 8, bias=False)
        self.tied.weight = self.q_proj.weight


def test_default_selection_and_memory():
    model = TinyLM()
    mon = GeometryMonitor(model, k=2)
    assert mon.names == ["q_proj.weight", "mlp.0.weight", "mlp.1.weight"]  # tied once
    assert mon.reference_bytes == 2 * (64 + 192 + 192)
    by_name = GeometryMonitor(model, k=2, modules=["lm_head", "mlp.0.weight"])
    assert by_name.names == ["lm_head.weight", "mlp.0.weight"]
    pred = GeometryMonitor(model, k=2, modules=lambda name, m: name.startswith("mlp."))
    assert pred.names == ["mlp.0.weight", "mlp.1.weight"]
    with pytest.raises(ValueError, match="neither a parameter"):
        GeometryMonitor(model, modules=["nope"])
    with pytest.raises(ValueError, match="2-D"):
        GeometryMonitor(model, modules=["norm.weight"])
    with pytest.raises(ValueError, match="no weight matrices"):
        GeometryMonitor(model, modules=lambda name, m: False)


@pytest.mark.parametrize(
    "kwargs",
    [{"every": 0}, {"k": 0}, {"lock_threshold": 1.5}, {"on_lock": "explode"},
     {"lock_window": 0}, {"total_steps": 0}, {"perturb_scale": -1.0}],
)  # fmt: skip
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        GeometryMonitor(TwoLinear(), **kwargs)


def test_reference_from_state_dict_module_and_host():
    model = TwoLinear()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.a.weight.add_(0.01)
    for ref in (base, TwoLinear()):  # TwoLinear() is seeded: the same W0
        mon = GeometryMonitor(model, reference=ref, every=1, k=4, reference_device="cpu")
        rec = mon.step(1)
        assert rec["dw_fro"] > 0 and mon.matrix_records[1]["dw_fro"] == 0.0
    with pytest.raises(KeyError, match="b.weight"):
        GeometryMonitor(model, reference={"a.weight": base["a.weight"]})
    with pytest.raises(ValueError, match="shape"):
        GeometryMonitor(model, reference={"a.weight": base["b.weight"],
                                          "b.weight": base["b.weight"]})  # fmt: skip


def test_bf16_parameters_do_not_alias_the_reference():
    model = TwoLinear(dtype=torch.bfloat16)
    mon = GeometryMonitor(model, every=1, k=4)
    with torch.no_grad():
        model.a.weight.mul_(1.5)
    rec = mon.step(1)
    assert rec["unchanged_fraction"] < 0.5 and rec["dw_fro"] > 0


@pytest.mark.parametrize("pandas_missing", [False, True])
def test_history_and_log_items(monkeypatch, pandas_missing):
    if pandas_missing:
        monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    model = TwoLinear()
    mon = GeometryMonitor(model, every=10, k=8, total_steps=200)
    lock_trajectory(mon, model, lock_at=50, end=80)
    hist = mon.history  # pandas.DataFrame, or pyarrow.Table where pandas is missing (CI)
    columns = set(hist.column_names) if hasattr(hist, "column_names") else set(hist.columns)
    steps = hist["step"]
    steps = steps.to_pylist() if hasattr(steps, "to_pylist") else list(steps)
    assert len(hist) == 8 and steps == list(range(10, 90, 10))
    assert {"unchanged_fraction", "dw_fro", "stable_rank", "sim_k", "locked"} <= columns
    assert len(mon.matrix_history) == 16
    logs = log_items(mon.records[-1])
    assert logs["geometry/locked"] == 1.0 and logs["geometry/lock_step"] == 50
    assert "geometry/sim_k" not in log_items(mon.records[0])  # undefined values left out
    assert all(isinstance(v, (int, float)) for v in logs.values())


def test_import_paramgeom_is_light():
    code = (
        "import sys, paramgeom, paramgeom.integrations\n"
        "assert 'transformers' not in sys.modules and 'paramgeom.monitor' not in sys.modules\n"
        "assert paramgeom.GeometryMonitor.__name__ == 'GeometryMonitor'\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "try:\n"
        "    import paramgeom.integrations.hf\n"
        "except ImportError as exc:\n"
        "    assert 'needs transformers' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
