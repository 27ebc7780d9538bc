"""The embedded task (paramgeom.drivers.task), rollouts and model folders of the drivers."""

from __future__ import annotations

import types

import pytest
import torch

from paramgeom.drivers.rollout import completion_logits, from_completions, left_pad, sample
from paramgeom.drivers.task import (
    ArithmeticTask,
    CharTokenizer,
    Problem,
    exact_reward,
    rewards,
)


def test_char_tokenizer_roundtrip(tmp_path):
    tok = CharTokenizer()
    assert tok.vocab_size == 15 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.prompt_ids("37+485=")
    assert ids[0] == tok.bos_id and len(ids) == 8
    assert tok.decode(ids) == "37+485="
    assert tok.completion_ids("522") == [*tok.encode("522"), tok.eos_id]
    assert tok.decode([*tok.completion_ids("522"), tok.pad_id]) == "522"
    with pytest.raises(ValueError, match="'x'"):
        tok.encode("3x")
    tok.save(tmp_path)
    back = CharTokenizer.load(tmp_path)
    assert back.fingerprint() == tok.fingerprint()
    assert CharTokenizer("0123456789+=-").fingerprint() != tok.fingerprint()


def test_problem_and_reward():
    p = Problem(37, 485)
    assert (p.prompt, p.answer) == ("37+485=", "522")
    assert exact_reward("522", "522") == 1.0
    assert exact_reward(" 522 ", "522") == 1.0
    for wrong in ("52", "5220", "0522", "523", "", "522+"):
        assert exact_reward(wrong, "522") == 0.0
    r = rewards(["522", "1", "10"], ["522", "2", "10"])
    assert r.tolist() == [1.0, 0.0, 1.0] and r.dtype == torch.float32
    with pytest.raises(ValueError):
        rewards(["1"], ["1", "2"])


def test_task_sampling_reproducible_and_held_out():
    task = ArithmeticTask(digits=2, eval_size=200)
    ev = task.eval_set()
    assert len(ev) == 200 and len(set(ev)) == 200
    assert ev == ArithmeticTask(digits=2, eval_size=200).eval_set()
    a = task.sample(3000, torch.Generator().manual_seed(5))
    b = task.sample(3000, torch.Generator().manual_seed(5))
    assert a == b
    assert not set(a) & set(ev)  # held out: 2-digit pairs collide often, none may appear
    assert all(0 <= p.a < 100 and 0 <= p.b < 100 for p in a)
    assert a != task.sample(3000, torch.Generator().manual_seed(6))


def test_difficulty_knob():
    for d in (1, 3, 6):
        task = ArithmeticTask(digits=d, eval_size=10)
        ps = task.sample(400, torch.Generator().manual_seed(0))
        assert max(max(p.a, p.b) for p in ps) < 10**d
        assert max(len(p.answer) for p in ps) <= d + 1 == task.max_new_tokens - 1
    assert max(p.a for p in ArithmeticTask(digits=6).sample(50, torch.Generator())) >= 10**5
    with pytest.raises(ValueError):
        ArithmeticTask(digits=0)
    with pytest.raises(ValueError, match="more than half"):
        ArithmeticTask(digits=1, eval_size=60)


def test_left_pad_and_reference_rollout():
    ids, mask = left_pad([[1, 5], [1, 5, 6, 7]], pad_id=0)
    assert ids.tolist() == [[0, 0, 1, 5], [1, 5, 6, 7]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    tok = CharTokenizer()
    ro = from_completions(
        [tok.prompt_ids("1+2="), tok.prompt_ids("10+20=")],
        [tok.completion_ids("3"), tok.completion_ids("30")],
        tok.pad_id,
    )
    assert ro.prompt_len == 7
    assert ro.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert ro.texts(tok) == ["3", "30"]
    assert ro.position_ids[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]


class _CountingLM(torch.nn.Module):
    """Deterministic stand-in for a causal LM: the next token is (last token + 1), and
    ``eos`` follows ``stop``. Takes the Hugging Face keyword arguments the sampler passes."""

    def __init__(self, vocab=15, stop=7, eos=2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.stop, self.eos = vocab, stop, eos

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False,
                cache=None):  # fmt: skip
        last = input_ids
        nxt = torch.where(last == self.stop, torch.full_like(last, self.eos), last + 1)
        nxt = nxt.clamp(max=self.vocab - 1)
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float() * 50.0
        return types.SimpleNamespace(logits=logits, cache="kv")


def test_sample_stops_at_eos_and_masks():
    lm = _CountingLM()
    ro = sample(lm, [[1, 4], [1, 6]], max_new_tokens=5, eos_id=2, pad_id=0, temperature=0)
    # row 0: 5, 6, 7, eos; row 1: 7, eos, then padding
    assert ro.completions.tolist() == [[5, 6, 7, 2], [7, 2, 0, 0]]
    assert ro.completion_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    ro = sample(lm, [[1, 3]], max_new_tokens=2, eos_id=2, pad_id=0, temperature=0)
    assert ro.completions.tolist() == [[4, 5]] and ro.completion_mask.tolist() == [[1, 1]]


def test_sampling_with_cache_matches_full_recompute():
    pytest.importorskip("transformers")
    from paramgeom.drivers.models import build_model

    torch.set_num_threads(1)
    tok = CharTokenizer()
    model = build_model("tiny", tok, seed=3).eval()
    prompts = [tok.prompt_ids(t) for t in ("7+5=", "123+456=", "99+1=")]
    ro = sample(model, prompts, 5, tok.eos_id, tok.pad_id, temperature=0)
    # greedy decoding without a cache, one prompt at a time (no padding)
    for i, p in enumerate(prompts):
        ids = list(p)
        for _ in range(ro.completions.shape[1]):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tok.eos_id:
                break
        got = [t for t, m in zip(ro.completions[i].tolist(), ro.completion_mask[i].tolist(),
                                 strict=True) if m]  # fmt: skip
        assert got == ids[len(p) :]
    # logits of the padded block equal those of each prompt alone
    with torch.no_grad():
        lg = completion_logits(model, ro)
        # row 2 with one column of its left padding removed
        less_pad = type(ro)(
            ro.input_ids[2:, 1:], ro.attention_mask[2:, 1:], ro.prompt_len - 1,
            ro.completion_mask[2:],
        )  # fmt: skip
        one = completion_logits(model, less_pad)
    assert torch.allclose(lg[2], one[0], atol=1e-5)
    # seeded sampling is reproducible
    a = sample(model, prompts, 5, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0))
    b = sample(model, prompts, 5, tok.eos_id, tok.pad_id, torch.Generator().manual_seed(0))
    assert torch.equal(a.input_ids, b.input_ids)


def test_model_folder_roundtrip(tmp_path):
    pytest.importorskip("transformers")
    from safetensors import safe_open

    from paramgeom.drivers.models import (
        SIZES,
        build_model,
        count_parameters,
        load_model,
        save_model,
    )

    tok = CharTokenizer()
    model = build_model("tiny", tok, seed=0)
    assert 0.8e6 < count_parameters(model) < 0.9e6
    assert set(SIZES) == {"tiny", "small", "base"}
    w = model.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.float32 and 0.015 < float(w.detach().std()) < 0.025
    save_model(model, tmp_path / "m", tok)
    assert w.dtype == torch.float32  # master weights untouched
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (not a dict)
    assert dtypes == {torch.bfloat16}
    back, codec = load_model(tmp_path / "m")
    assert codec.fingerprint() == tok.fingerprint()
    for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert b.dtype == torch.float32
        assert torch.equal(a.to(torch.bfloat16).float(), b), n
