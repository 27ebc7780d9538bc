"""Driver objectives (paramgeom.drivers.objectives) against hand-computed values on a 2-token
toy and against their plain-Python references; the gradient projection's subspace property."""

from __future__ import annotations

import math

import pytest
import torch

from paramgeom.drivers import objectives as obj

LN = math.log

# The 2-token toy: one sequence, two completion positions, a vocabulary of two tokens.
# Student: position 0 p = (1/4, 3/4), position 1 p = (1/2, 1/2).
# Teacher: position 0 p = (1/2, 1/2), position 1 p = (1/4, 3/4). Sampled tokens a = (1, 0).
S_LOGITS = torch.tensor([[[0.0, LN(3)], [0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
T_LOGITS = torch.tensor([[[0.0, 0.0], [0.0, LN(3)]]], dtype=torch.float64)
TOKENS = torch.tensor([[1, 0]])
MASK = torch.ones(1, 2, dtype=torch.float64)
P_S = [[0.25, 0.75], [0.5, 0.5]]
LS = [LN(3 / 4), LN(1 / 2)]  # log pi_s(a_t)
LT = [LN(1 / 2), LN(1 / 4)]  # log pi_t(a_t)


def _grad(loss):
    (g,) = torch.autograd.grad(loss, S_LOGITS)
    return g[0].tolist()


def _close(a, b, tol=1e-12):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, list):
            _close(x, y, tol)
        else:
            assert abs(x - y) <= tol * max(1.0, abs(y)), (a, b)


def _pg_grad_by_hand(coef):
    """d/dz of -(1/T) sum_t c_t log softmax(z_t)[a_t] = -(1/T) c_t (onehot(a_t) - p_t)."""
    out = []
    for t, a in enumerate(TOKENS[0].tolist()):
        onehot = [1.0 if v == a else 0.0 for v in range(2)]
        out.append([-(coef[t] / 2) * (onehot[v] - P_S[t][v]) for v in range(2)])
    return out


def test_token_logprobs_toy():
    lp = obj.token_logprobs(S_LOGITS, TOKENS)
    _close(lp[0].tolist(), LS)
    _close(obj.token_logprobs_ref(S_LOGITS.tolist(), TOKENS.tolist())[0], LS)


def test_sft_loss_toy():
    # L = -(1/2)(ln 3/4 + ln 1/2) = ln(8/3) / 2
    loss = obj.sft_loss(S_LOGITS, TOKENS, MASK, 2.0)
    assert float(loss.detach()) == pytest.approx(LN(8 / 3) / 2, rel=1e-14)
    assert obj.sft_loss_ref(S_LOGITS.tolist(), TOKENS.tolist(), MASK.tolist(), 2.0) == (
        pytest.approx(LN(8 / 3) / 2, rel=1e-14)
    )
    # cross-entropy gradient (p - onehot) / T
    _close(_grad(loss), _pg_grad_by_hand([1.0, 1.0]))


def test_opd_advantage_and_loss_toy():
    ls = obj.token_logprobs(S_LOGITS, TOKENS)
    lt = obj.token_logprobs(T_LOGITS, TOKENS)
    adv = obj.opd_advantages(ls, lt)
    expect = [-LN(1.5), -LN(2.0)]  # -(ln 3/4 - ln 1/2), -(ln 1/2 - ln 1/4)
    _close(adv[0].tolist(), expect)
    _close(obj.opd_advantages_ref([LS], [LT])[0], expect)
    assert not adv.requires_grad
    loss = obj.policy_gradient_loss(ls, adv, MASK, 2.0)
    value = -(expect[0] * LS[0] + expect[1] * LS[1]) / 2
    assert float(loss.detach()) == pytest.approx(value, rel=1e-14)
    assert obj.policy_gradient_loss_ref([LS], [expect], [[1, 1]], 2.0) == pytest.approx(value)
    # token 0: -(1/2)(-ln 1.5)((0,1) - (1/4,3/4)) = (-ln1.5/8, +ln1.5/8)
    g = _grad(loss)
    _close(g[0], [-LN(1.5) / 8, LN(1.5) / 8])
    _close(g, _pg_grad_by_hand(expect))


def test_full_reverse_kl_toy():
    kl = obj.reverse_kl(S_LOGITS, T_LOGITS)
    k0 = 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5)
    k1 = 0.5 * LN(0.5 / 0.25) + 0.5 * LN(0.5 / 0.75)
    _close(kl[0].tolist(), [k0, k1])
    _close(obj.reverse_kl_ref(S_LOGITS.tolist(), T_LOGITS.tolist())[0], [k0, k1])
    loss = obj.kl_loss(kl, MASK, 2.0)
    assert float(loss.detach()) == pytest.approx((k0 + k1) / 2, rel=1e-14)
    # dKL/dz_v = p_v (log p_v/q_v - KL): at position 0 -> (1/4 (ln(1/2) - k0), 3/4 (ln 1.5 - k0))
    g = _grad(loss)
    _close(g[0], [0.25 * (LN(0.5) - k0) / 2, 0.75 * (LN(1.5) - k0) / 2])
    # and the teacher side carries no gradient
    t = T_LOGITS.clone().requires_grad_(True)
    obj.kl_loss(obj.reverse_kl(S_LOGITS, t), MASK, 2.0).backward()
    assert t.grad is None


def test_grpo_advantages_hand():
    # group of 2, rewards (1, 0): mean 1/2, sample std sqrt(1/2) -> +-sqrt(1/2)
    a = obj.grpo_advantages(torch.tensor([1.0, 0.0]), 2, eps=0.0)
    _close(a.tolist(), [math.sqrt(0.5), -math.sqrt(0.5)], 1e-6)
    # group of 4, rewards (1, 0, 0, 0): mean 1/4, sample std 1/2 -> (3/2, -1/2, -1/2, -1/2)
    r = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    a = obj.grpo_advantages(torch.tensor(r), 4, eps=0.0)
    _close(a[:4].tolist(), [1.5, -0.5, -0.5, -0.5], 1e-6)
    # a group whose rewards are all equal gets 0 (with the default eps)
    assert obj.grpo_advantages(torch.tensor(r), 4)[4:].abs().max() == 0
    _close(obj.grpo_advantages_ref(r[:4], 4, eps=0.0), [1.5, -0.5, -0.5, -0.5])
    with pytest.raises(ValueError, match=">= 2 samples"):
        obj.grpo_advantages(torch.tensor([1.0]), 1)
    with pytest.raises(ValueError, match="multiple"):
        obj.grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)


def test_mixed_advantages_toy():
    # two sequences of the toy in one GRPO group with rewards (1, 0); alpha = 0.25
    a_opd = torch.tensor([[-LN(1.5), -LN(2.0)], [-LN(1.5), -LN(2.0)]], dtype=torch.float64)
    a_rlvr = obj.grpo_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2, eps=0.0)
    mixed = obj.mix_advantages(a_opd, a_rlvr, 0.25)
    h = math.sqrt(0.5)
    expect = [
        [0.25 * -LN(1.5) + 0.75 * h, 0.25 * -LN(2.0) + 0.75 * h],
        [0.25 * -LN(1.5) - 0.75 * h, 0.25 * -LN(2.0) - 0.75 * h],
    ]
    _close(mixed.tolist(), expect, 1e-9)
    _close(obj.mix_advantages_ref(a_opd.tolist(), a_rlvr.tolist(), 0.25), expect, 1e-9)
    # alpha = 1 is OPD, alpha = 0 is RLVR
    _close(obj.mix_advantages(a_opd, a_rlvr, 1.0).tolist(), a_opd.tolist())
    _close(obj.mix_advantages(a_opd, a_rlvr, 0.0)[:, 1].tolist(), a_rlvr.tolist())


def test_token_sparsification_rescale():
    ls = obj.token_logprobs(S_LOGITS, TOKENS)
    adv = obj.opd_advantages(ls, obj.token_logprobs(T_LOGITS, TOKENS))
    full = obj.policy_gradient_loss(ls, adv, MASK, 2.0)
    seen = {}
    for seed in range(40):
        w = obj.token_keep_weights(MASK, 0.5, torch.Generator().manual_seed(seed))
        # kept = round(0.5 * 2) = 1 token, weighted T / kept = 2
        assert sorted(w[0].tolist()) == [0.0, 2.0]
        kept = int(w[0].argmax())
        loss = obj.policy_gradient_loss(ls, adv, w.double(), 2.0)
        # (1/T) * (T/kept) * l_kept = l_kept: the kept token's own term
        assert float(loss.detach()) == pytest.approx(
            -float(adv[0, kept] * ls[0, kept].detach()), rel=1e-14
        )
        seen[kept] = float(loss.detach())
    # both choices occur, and their mean is the full loss (unbiased)
    assert set(seen) == {0, 1}
    assert (seen[0] + seen[1]) / 2 == pytest.approx(float(full.detach()), rel=1e-14)
    # SFT the same way
    w = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    assert float(obj.sft_loss(S_LOGITS, TOKENS, w, 2.0).detach()) == pytest.approx(
        -LS[1], rel=1e-14
    )
    # rho = 1 is the mask; counted tokens only are ever kept
    assert torch.equal(obj.token_keep_weights(MASK, 1.0), MASK.float())
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    w = obj.token_keep_weights(m, 0.5, torch.Generator().manual_seed(0))
    assert float((w > 0).sum()) == 2 and float(w[m == 0].abs().sum()) == 0
    assert float(w.sum()) == pytest.approx(4.0)  # kept * T/kept = T
    with pytest.raises(ValueError):
        obj.token_keep_weights(m, 0.0)


def test_importance_clipping_toy():
    # off-policy: the teacher sampled a = (1, 0); ratios pi_s/pi_t = (3/4)/(1/2), (1/2)/(1/4)
    ls = obj.token_logprobs(S_LOGITS, TOKENS)
    lt = obj.token_logprobs(T_LOGITS, TOKENS)
    rho = obj.importance_weights(ls, lt, clip=1.8)
    _close(rho[0].tolist(), [1.5, 1.8])  # 2.0 clipped to 1.8
    _close(obj.importance_weights_ref([LS], [LT], 1.8)[0], [1.5, 1.8])
    assert not rho.requires_grad
    adv = obj.opd_advantages(ls, lt)
    loss = obj.policy_gradient_loss(ls, adv, MASK, 2.0, is_weights=rho)
    a = [-LN(1.5), -LN(2.0)]
    value = -(1.5 * a[0] * LS[0] + 1.8 * a[1] * LS[1]) / 2
    assert float(loss.detach()) == pytest.approx(value, rel=1e-14)
    ref = obj.policy_gradient_loss_ref([LS], [a], [[1, 1]], 2.0, [[1.5, 1.8]])
    assert ref == pytest.approx(value, rel=1e-14)
    _close(_grad(loss), _pg_grad_by_hand([1.5 * a[0], 1.8 * a[1]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_functions_match_references_random(seed):
    g = torch.Generator().manual_seed(seed)
    B, G, V = 3, 5, 7
    s = torch.randn(B, G, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(B, G, V, generator=g, dtype=torch.float64) * 2
    tok = torch.randint(0, V, (B, G), generator=g)
    mask = (torch.rand(B, G, generator=g) > 0.3).double()
    mask[:, 0] = 1
    num = float(mask.sum())
    ls, lt = obj.token_logprobs(s, tok), obj.token_logprobs(t, tok)
    _close(ls.tolist(), obj.token_logprobs_ref(s.tolist(), tok.tolist()), 1e-6)
    assert float(obj.sft_loss(s, tok, mask, num)) == pytest.approx(
        obj.sft_loss_ref(s.tolist(), tok.tolist(), mask.tolist(), num), rel=1e-6
    )
    r = (torch.rand(6, generator=g) > 0.5).double()
    _close(obj.grpo_advantages(r, 3).tolist(), obj.grpo_advantages_ref(r.tolist(), 3), 1e-6)
    adv = obj.mix_advantages(obj.opd_advantages(ls, lt), torch.randn(B, generator=g), 0.3)
    rho = obj.importance_weights(ls, lt, 1.2)
    _close(rho.tolist(), obj.importance_weights_ref(ls.tolist(), lt.tolist(), 1.2), 1e-6)
    got = obj.policy_gradient_loss(ls, adv, mask, num, rho)
    ref = obj.policy_gradient_loss_ref(ls.tolist(), adv.tolist(), mask.tolist(), num, rho.tolist())
    assert float(got) == pytest.approx(ref, rel=1e-6)
    _close(obj.reverse_kl(s, t).tolist(), obj.reverse_kl_ref(s.tolist(), t.tolist()), 1e-6)


# ---------------------------------------------------------------------------------------
# gradient projection (functional sufficiency test)


def test_projector_keeps_gradients_in_subspace():
    from paramgeom.drivers.projection import GradientProjector, build_projector

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 20), torch.nn.ReLU(), torch.nn.Linear(20, 9))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = {}
    g = torch.Generator().manual_seed(1)
    for k, v in base.items():
        # reference update of rank 3 on every matrix
        if v.dim() == 2:
            ref[k] = v + 0.1 * torch.randn(v.shape[0], 3, generator=g) @ torch.randn(
                3, v.shape[1], generator=g
            )
        else:
            ref[k] = v.clone()
    proj, summary = build_projector(model, base, ref, k=3, mode="update")
    assert summary["matrices"] == 2 and summary["zero_updates"] == []
    for name, v in proj.bases.items():
        # V spans the row space of dW: dW (I - V V^T) = 0
        dw = (ref[name] - base[name]).double()
        vv = v.double()
        assert torch.allclose(vv.T @ vv, torch.eye(3, dtype=torch.float64), atol=1e-6)
        assert float((dw - dw @ vv @ vv.T).norm() / dw.norm()) < 1e-6
    x = torch.randn(32, 24, generator=g)
    model(x).square().mean().backward()
    assert proj.residual() > 0.1  # raw gradients are not in the subspaces
    before = {n: p.detach().clone() for n, p in proj.params.items()}
    proj.before_step()
    assert proj.residual() < 1e-6
    # the projected gradient is the orthogonal projection: idempotent
    for name, p in proj.params.items():
        v = proj.bases[name]
        assert torch.allclose(p.grad, p.grad @ v @ v.T, atol=1e-6)
    # update mode: an AdamW step moves W only inside the subspace
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()
    proj.after_step()
    for name, p in proj.params.items():
        d = (p.detach() - before[name]).double()
        v = proj.bases[name].double()
        assert float(d.norm()) > 0
        assert float((d - d @ v @ v.T).norm() / d.norm()) < 1e-5
    with pytest.raises(ValueError):
        GradientProjector({}, {}, mode="bogus")
