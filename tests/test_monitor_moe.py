"""MoE expert stacks in the GeometryMonitor: transformers' fused experts (a tiny Mixtral,
``mlp.experts.gate_up_proj`` ``[E, 2I, H]`` and ``down_proj`` ``[E, H, I]``) are watched
per expert by default, each expert's figures equal the float64 oracle of its own matrix,
and each stack gets a summary (pooled unchanged fraction and norm, mean stable rank over
the experts that changed)."""

from __future__ import annotations

import math

import pytest
import torch

from paramgeom import GeometryMonitor

transformers = pytest.importorskip("transformers")


def tiny_mixtral():
    cfg = transformers.MixtralConfig(
        vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(cfg)


def _oracle(w0: torch.Tensor, w1: torch.Tensor) -> tuple[float, float, float]:
    """(unchanged fraction under eta = 1e-3 on bf16 values, ||dW||_F, stable rank)."""
    a, b = w0.to(torch.bfloat16).double(), w1.to(torch.bfloat16).double()
    d = b - a
    unchanged = float((d.abs() <= 1e-3 * torch.maximum(a.abs(), b.abs())).double().mean())
    fro = float(torch.linalg.matrix_norm(d))
    s1 = float(torch.linalg.matrix_norm(d, ord=2))
    return unchanged, fro, (fro**2 / s1**2 if s1 > 0 else 0.0)


def test_experts_are_watched_one_matrix_each():
    model = tiny_mixtral()
    mon = GeometryMonitor(model, every=1, k=2)
    stack = "model.layers.0.mlp.experts.gate_up_proj"
    assert [n for n in mon.names if n.startswith(stack)] == [f"{stack}[{e}]" for e in range(4)]
    assert "model.layers.1.mlp.experts.down_proj[3]" in mon.names
    # Attention projections and the expert stacks (the router is no nn.Linear here).
    watched = [p for n, p in model.named_parameters() if "_proj" in n and "embed" not in n]
    assert mon.reference_bytes == 2 * sum(p.numel() for p in watched)


def test_expert_figures_match_the_oracle_and_stacks_summarise():
    model = tiny_mixtral()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    mon = GeometryMonitor(model, every=1, k=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 3:  # experts 1..3 get a rank-1 update; expert 0 stays
                for e in range(1, p.shape[0]):
                    u = torch.randn(p.shape[1], 1, generator=g)
                    v = torch.randn(1, p.shape[2], generator=g)
                    p[e] += 0.05 * (u @ v) + 1e-3 * torch.randn(p.shape[1:], generator=g)
    rec = mon.step(1)
    assert rec["n_matrices"] == len(mon.names)
    rows = {r["name"]: r for r in mon.matrix_records}
    stack = "model.layers.1.mlp.experts.down_proj"
    for e in range(4):
        row = rows[f"{stack}[{e}]"]
        assert (row["stack"], row["expert"]) == (stack, e)
        w0, w1 = base[stack][e], model.get_parameter(stack)[e]
        unchanged, fro, srank = _oracle(w0, w1)
        assert row["unchanged_fraction"] == pytest.approx(unchanged, abs=1e-12)
        assert row["dw_fro"] == pytest.approx(fro, rel=1e-9)
        assert row["stable_rank"] == pytest.approx(srank, rel=1e-6)
    assert rows[f"{stack}[0]"]["dw_fro"] == 0.0
    summary = {r["stack"]: r for r in mon.stack_records}
    s = summary[stack]
    assert (s["step"], s["n_experts"], s["experts_changed"]) == (1, 4, 3)
    experts = [rows[f"{stack}[{e}]"] for e in range(4)]
    assert s["dw_fro"] == pytest.approx(math.sqrt(sum(r["dw_fro"] ** 2 for r in experts)))
    assert s["unchanged_fraction"] == pytest.approx(
        sum(r["unchanged_fraction"] for r in experts) / 4
    )
    assert s["stable_rank"] == pytest.approx(sum(r["stable_rank"] for r in experts[1:]) / 3)
    assert len(mon.stack_history) == 4  # 2 layers x 2 stacks


def test_monitor_during_moe_training_and_state_roundtrip(tmp_path):
    model = tiny_mixtral()
    mon = GeometryMonitor(model, every=2, k=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, 40, (4, 12), generator=torch.Generator().manual_seed(0))
    for step in range(1, 7):
        out = model(input_ids=tokens, labels=tokens)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        mon.step(step)
    assert [r["step"] for r in mon.records] == [2, 4, 6]
    assert all(math.isfinite(r["stable_rank"]) for r in mon.stack_records)
    torch.save(mon.state_dict(), tmp_path / "m.pt")
    other = GeometryMonitor(model, every=2, k=2)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert other.stack_records == mon.stack_records
