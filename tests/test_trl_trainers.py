"""GeometryCallback inside TRL's trainers for the paper's three methods, a few steps of a
tiny Llama each on CPU: ``GKDTrainer`` with ``lmbda=1`` (on-policy distillation: the student
samples, a teacher scores), ``GRPOTrainer`` (RLVR: sampled completions and a verifiable
reward) and ``SFTTrainer``. The monitor's figures reach the trainer's ``log_history`` at the
recording steps, equal to the monitor's own records, and show the student moving."""

from __future__ import annotations

import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from paramgeom import GeometryMonitor  # noqa: E402
from paramgeom.integrations.hf import GeometryCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CHARS = list("0123456789+= ")


def tokenizer():
    """A character-level tokenizer built here (no model hub), with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *CHARS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>",
    )  # fmt: skip
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}"
        "{{ eos_token }}{% endif %}{% endfor %}"
    )
    return tok


def tiny(seed: int, vocab: int):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg)


SUMS = [(a, b) for a in range(8) for b in range(4)]


def make_trainer(kind: str, tmp_path, model, tok):
    common = dict(
        output_dir=str(tmp_path / kind), max_steps=4, per_device_train_batch_size=4,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    if kind == "sft":
        ds = datasets.Dataset.from_dict({"text": [f"{a}+{b}={a + b}" for a, b in SUMS]})
        args = trl.SFTConfig(**common, max_length=32)
        return trl.SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    if kind == "grpo":
        ds = datasets.Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in SUMS]})

        def reward(completions, prompts, **kwargs):
            """Verifiable: 1 for the right sum; partial credit for digits (a random tiny
            model is never right, and equal rewards would give no gradient)."""
            out = []
            for prompt, completion in zip(prompts, completions, strict=True):
                a, b = (int(x) for x in prompt[:-1].split("+"))
                right = completion.strip() == str(a + b)
                out.append(1.0 if right else 0.1 * sum(ch.isdigit() for ch in completion))
            return out

        args = trl.GRPOConfig(**common, num_generations=2, max_completion_length=4,
                              generation_batch_size=4)  # fmt: skip
        return trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=ds,
                               processing_class=tok)  # fmt: skip
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    chats = [
        [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]
        for a, b in SUMS
    ]
    ds = datasets.Dataset.from_dict({"messages": chats})
    args = GKDConfig(**common, lmbda=1.0, max_new_tokens=4, max_length=32)  # on-policy only
    teacher = tiny(1, len(tok))
    return GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=ds,
                      processing_class=tok)  # fmt: skip


@pytest.mark.parametrize("kind", ["gkd", "grpo", "sft"])
def test_callback_in_trl_trainer(tmp_path, kind):
    tok = tokenizer()
    model = tiny(0, len(tok))
    mon = GeometryMonitor(model, every=2, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(kind, tmp_path, model, tok)
        GeometryCallback(mon).attach(trainer)
        trainer.train()
    assert [r["step"] for r in mon.records] == [2, 4]
    logged = {h["step"]: h for h in trainer.state.log_history if "geometry/stable_rank" in h}
    assert sorted(logged) == [2, 4]
    for rec in mon.records:
        entry = logged[rec["step"]]
        for key in ("unchanged_fraction", "dw_fro", "stable_rank", "rel_update"):
            assert entry[f"geometry/{key}"] == rec[key], key
    assert all(r["dw_fro"] > 0 for r in mon.records)  # the trained model is the watched one
    assert mon.records[1]["dw_fro"] > mon.records[0]["dw_fro"]
