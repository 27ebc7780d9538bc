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


def _resumable_trainer(out, model, callbacks, steps):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
        learning_rate=1e-2, logging_steps=100, save_strategy="steps", save_steps=3,
        report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0,
    )  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                callbacks=callbacks)  # fmt: skip


def test_monitor_state_resumes_with_the_trainer_checkpoint(tmp_path):
    """Train 6 steps saving at 3; a fresh process-like restart (new model loaded from the
    step-3 checkpoint, new monitor whose own W_0 snapshot is the trained weights) resumes:
    the callback loads paramgeom_monitor.pt and the history equals the uninterrupted run's."""
    from safetensors.torch import load_file

    from paramgeom.integrations.hf import STATE_FILE

    whole_mon = GeometryMonitor(tiny_llama(), every=1, k=4)
    trainer = _resumable_trainer(tmp_path / "whole", whole_mon.model, [], steps=6)
    GeometryCallback(whole_mon).attach(trainer)
    trainer.train()
    assert (tmp_path / "whole" / "checkpoint-3" / STATE_FILE).is_file()

    model = tiny_llama()
    ckpt = tmp_path / "whole" / "checkpoint-3"
    model.load_state_dict(load_file(ckpt / "model.safetensors"), strict=False)
    mon = GeometryMonitor(model, every=1, k=4)
    trainer = _resumable_trainer(tmp_path / "whole", model, [], steps=6)
    GeometryCallback(mon).attach(trainer)
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert [r["step"] for r in mon.records] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(mon.records, whole_mon.records, strict=True):
        for key in ("unchanged_fraction", "dw_fro", "stable_rank"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["step"], key)


def test_resume_without_monitor_state_warns(tmp_path):
    trainer = _resumable_trainer(tmp_path / "run", tiny_llama(), [], steps=3)
    trainer.train()
    (tmp_path / "run" / "checkpoint-3" / "paramgeom_monitor.pt").unlink(missing_ok=True)
    model = tiny_llama()
    trainer = _resumable_trainer(tmp_path / "run", model, [], steps=6)
    GeometryCallback(GeometryMonitor(model, every=1, k=4)).attach(trainer)
    with pytest.warns(RuntimeWarning, match="history and lock detection start over"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
