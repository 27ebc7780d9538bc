"""GeometryCallback inside a real ``transformers.Trainer`` (DESIGN.md "Monitor"): the monitor
runs from ``on_step_end`` and its figures reach ``trainer.state.log_history`` and, with
:meth:`GeometryCallback.attach`, the ``on_log`` of reporting callbacks."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it on PyTorch

from paramgeom import GeometryMonitor  # noqa: E402
from paramgeom.integrations.hf import GeometryCallback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12, vocab=40):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Recorder(transformers.TrainerCallback):
    """Stands in for a reporter (W&B, TensorBoard): keeps what its on_log receives."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


def make_trainer(tmp_path, model, callbacks, steps=6):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=1e-2, logging_steps=100, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                callbacks=callbacks)  # fmt: skip


def test_callback_values_reach_log_history(tmp_path):
    model = tiny_llama()
    mon = GeometryMonitor(model, every=2, k=4)
    # 2 layers x (q, k, v, o, gate, up, down); no embeddings, no lm_head
    assert len(mon.names) == 14 and not any("embed" in n or "lm_head" in n for n in mon.names)
    trainer = make_trainer(tmp_path, model, [GeometryCallback(mon)])
    trainer.train()
    assert [r["step"] for r in mon.records] == [2, 4, 6]
    assert mon.total_steps == 6  # taken from the Trainer's max_steps
    logged = [h for h in trainer.state.log_history if "geometry/stable_rank" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for h, rec in zip(logged, mon.records, strict=True):
        assert "loss" in h  # the Trainer's own entry for that step carries the figures
        assert h["geometry/stable_rank"] == rec["stable_rank"] > 0
        assert h["geometry/unchanged_fraction"] == rec["unchanged_fraction"] < 1
        assert h["geometry/dw_fro"] == rec["dw_fro"] > 0
    assert "geometry/sim_k" not in logged[0] and 0 < logged[1]["geometry/sim_k"] <= 1


def test_attach_feeds_reporters_and_stop(tmp_path):
    model = tiny_llama()
    recorder = Recorder()
    mon = GeometryMonitor(model, every=2, k=4, on_lock="stop")
    trainer = make_trainer(tmp_path, model, [recorder])  # a reporter ahead of the monitor
    cb = GeometryCallback(mon).attach(trainer)
    assert trainer.callback_handler.callbacks[0] is cb
    mon.should_stop = True  # as on_lock="stop" sets it: training ends at the next step end
    trainer.train()
    assert trainer.state.global_step == 1
    mon.should_stop = False
    trainer = make_trainer(tmp_path, model, [recorder], steps=4)
    GeometryCallback(mon).attach(trainer)
    trainer.train()
    seen = [entry for entry in recorder.logs if "geometry/stable_rank" in entry]
    assert len(seen) == 2 and all(entry["geometry/stable_rank"] > 0 for entry in seen)
