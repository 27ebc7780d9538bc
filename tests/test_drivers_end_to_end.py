"""The SFT / OPD / RLVR drivers end to end on the tiny model: a few steps each, checkpoints
that ``paramgeom diff`` reads, reproducibility, gradient projection, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from paramgeom.drivers import opd, rlvr, sft  # noqa: E402
from paramgeom.drivers.task import CharTokenizer  # noqa: E402

# Teacher and student base are trained for a handful of steps in the test (quality does
# not matter here); small batches and a 16-problem eval set keep each run near a second.
FAST = [
    "--steps", "3", "--save-every", "1", "--eval-size", "16", "--eval-every", "2",
    "--teacher-steps", "4", "--student-steps", "2", "--threads", "1", "--quiet",
]  # fmt: skip
POLICY = ["--prompts", "4", "--samples", "4"]
DRIVERS = {"sft": (sft.main, ["--batch", "16", "--bf16-autocast"]), "opd": (opd.main, POLICY),
           "rlvr": (rlvr.main, POLICY)}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def opd_run(tmp_path_factory, cache, one_thread_module) -> Path:
    out = tmp_path_factory.mktemp("runs") / "opd"
    assert opd.main(["--out", str(out), "--cache", str(cache), *FAST, *POLICY]) == 0
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_run(out: Path, driver: str, steps: int = 3) -> None:
    for s in range(steps + 1):
        ck = out / f"checkpoint-{s}"
        assert (ck / "config.json").is_file()
        assert (ck / "paramgeom_tokenizer.json").is_file() or (ck / "tokenizer.json").is_file()
        assert {t.dtype for t in _tensors(ck).values()} == {torch.bfloat16}
    recs = _metrics(out)
    assert [r["step"] for r in recs] == list(range(steps + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs[1:])
    evals = [0] + [s for s in range(1, steps + 1) if s % 2 == 0 or s == steps]
    assert [r["step"] for r in recs if "eval_accuracy" in r] == evals
    info = json.loads((out / "run.json").read_text())
    assert info["driver"] == driver and info["status"] == "done" and info["seed"] == 0
    assert {"torch", "transformers", "paramgeom"} <= set(info["versions"])
    assert info["checkpoints"] == list(range(steps + 1))
    assert info["config"]["steps"] == steps


def _diff(base: Path, tuned: Path, out: Path) -> dict:
    from paramgeom.cli import main as paramgeom_main

    rc = paramgeom_main(["diff", str(base), str(tuned), "--out", str(out), "--quiet",
                         "--no-angles"])  # fmt: skip
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("driver", ["sft", "opd", "rlvr"])
def test_driver_end_to_end(driver, tmp_path, cache, opd_run):
    if driver == "opd":
        out = opd_run
    else:
        main, extra = DRIVERS[driver]
        out = tmp_path / driver
        assert main(["--out", str(out), "--cache", str(cache), *FAST, *extra]) == 0
    _check_run(out, driver)
    summary = _diff(out / "checkpoint-0", out / "checkpoint-3", tmp_path / "diff")
    assert summary["missing_in_base"] == [] and summary["missing_in_tuned"] == []
    assert set(summary["by_module"]) >= {"q", "k", "v", "o", "gate", "up", "down", "lm_head"}
    if driver != "rlvr":  # RLVR's rewards are all 0 for a 2-step student: no update
        assert summary["by_module"]["q"]["unchanged_fraction"] < 1.0


def test_same_seed_reproduces(tmp_path, cache, opd_run):
    out = tmp_path / "again"
    assert opd.main(["--out", str(out), "--cache", str(cache), *FAST, *POLICY]) == 0
    for s in (1, 3):
        a, b = _tensors(opd_run / f"checkpoint-{s}"), _tensors(out / f"checkpoint-{s}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(recs):
        return [{k: v for k, v in r.items() if k != "step_s"} for r in recs]

    assert strip(_metrics(out)) == strip(_metrics(opd_run))
    other = tmp_path / "seed1"
    argv = ["--out", str(other), "--cache", str(cache), *FAST, *POLICY, "--seed", "1"]
    assert opd.main(argv) == 0
    a, b = _tensors(opd_run / "checkpoint-3"), _tensors(other / "checkpoint-3")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_opd_variants(tmp_path, cache):
    out = tmp_path / "mix"
    argv = ["--out", str(out), "--cache", str(cache), *FAST, *POLICY, "--steps", "2",
            "--mix-rlvr", "0.5", "--token-keep", "0.5", "--off-policy",
            "--is-clip", "2"]  # fmt: skip
    assert opd.main(argv) == 0
    rec = _metrics(out)[1]
    assert rec["kept_tokens"] == round(0.5 * rec["tokens"])
    assert rec["is_ratio"] > 0 and 0 <= rec["is_clipped"] <= 1 and "sampled_kl" in rec
    out = tmp_path / "fullkl"
    argv = ["--out", str(out), "--cache", str(cache), *FAST, *POLICY, "--steps", "2",
            "--full-kl", "--samples", "1"]  # fmt: skip
    assert opd.main(argv) == 0
    assert _metrics(out)[1]["loss"] > 0  # a KL, not a policy-gradient surrogate


def test_rlvr_step_uses_group_advantages(monkeypatch, cache, opd_run):
    """The RLVR objective turns varying rewards into a nonzero gradient (rewards patched to
    alternate 1, 0 within each group, since the tiny student solves nothing)."""
    from paramgeom.drivers import steps
    from paramgeom.drivers.models import load_model
    from paramgeom.drivers.task import ArithmeticTask

    model, codec = load_model(opd_run / "checkpoint-0")
    task = ArithmeticTask(eval_size=16)
    monkeypatch.setattr(
        steps,
        "rewards",
        lambda texts, answers: torch.tensor([float(i % 2) for i in range(len(texts))]),
    )
    step = steps.PolicyStep(task, codec, prompts=2, samples=4, opd_weight=0.0)
    ctx = steps.StepContext(1, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
                            torch.device("cpu"))  # fmt: skip
    loss, stats = step(model, ctx)
    loss.backward()
    assert stats["reward"] == 0.5
    assert float(model.model.layers[0].mlp.up_proj.weight.grad.norm()) > 0


def test_projection_keeps_training_in_subspace(tmp_path, cache, opd_run):
    """--project-grad-from end to end, then the same projector in the loop: every projected
    gradient lies in its top-k subspace, and in update mode so does W - W_0."""
    from paramgeom.drivers import loop, projection, steps
    from paramgeom.drivers.models import load_model
    from paramgeom.drivers.task import ArithmeticTask

    out = tmp_path / "proj"
    argv = ["--out", str(out), "--cache", str(cache), *FAST, *POLICY, "--steps", "2",
            "--project-grad-from", str(opd_run), "--project-k", "4",
            "--project-at", "0.5"]  # fmt: skip
    assert opd.main(argv) == 0
    info = json.loads((out / "run.json").read_text())["projection"]
    assert info["reference_step"] == 1  # 0.5 * 3 = 1.5: the tie goes to the earlier step
    assert info["matrices"] == 28 and info["k"] == 4 and info["mode"] == "grad"
    assert info["base_matches_start"]

    base, ref, step = projection.resolve_reference(opd_run, 1.0)
    assert step == 3
    model, codec = load_model(opd_run / "checkpoint-0")
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    proj, _ = projection.build_projector(
        model, load_model(base)[0].state_dict(), load_model(ref)[0].state_dict(), k=4,
        mode="update",
    )  # fmt: skip
    residuals = []
    before = proj.before_step

    def checked():
        before()
        residuals.append(proj.residual())

    proj.before_step = checked
    task = ArithmeticTask(eval_size=16)
    objective = steps.PolicyStep(task, codec, prompts=2, samples=4, teacher=load_model(ref)[0])
    cfg = loop.LoopConfig(steps=2, lr=1e-3, eval_every=0)
    loop.train(model, objective, cfg, task=task, codec=codec, projector=proj)
    assert len(residuals) == 2 and max(residuals) < 1e-5
    for name, p in proj.params.items():
        d = (p.detach() - w0[name]).double()
        v = proj.bases[name].double()
        assert float(d.norm()) > 0
        assert float((d - d @ v @ v.T).norm() / d.norm()) < 1e-4, name


def _hf_folder(path: Path, seed: int) -> Path:
    """A user-style Hugging Face folder: a Llama with tied embeddings and a tokenizers-library
    char tokenizer (loaded back through AutoTokenizer, not the drivers' own tokenizer)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate("0123456789+=")}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_user_model_folders(tmp_path):
    """--model / --teacher with any Hugging Face causal LM folders (their own tokenizer)."""
    from paramgeom.drivers.models import load_model

    student, teacher = _hf_folder(tmp_path / "s", 0), _hf_folder(tmp_path / "t", 1)
    out = tmp_path / "opd"
    argv = ["--out", str(out), "--model", str(student), "--teacher", str(teacher), *FAST,
            *POLICY, "--steps", "2", "--mix-rlvr", "0.5"]  # fmt: skip
    assert opd.main(argv) == 0
    _check_run(out, "opd", steps=2)
    info = json.loads((out / "run.json").read_text())
    assert info["student"]["source"] == "folder" and info["teacher"]["source"] == "folder"
    ck = out / "checkpoint-2"
    assert (ck / "tokenizer.json").is_file()
    assert "lm_head.weight" not in _tensors(ck)  # tied embeddings stored once
    model, codec = load_model(ck)
    assert codec.fingerprint() == load_model(student)[1].fingerprint()
    assert model.config.tie_word_embeddings
    out = tmp_path / "rlvr"
    argv = ["--out", str(out), "--model", str(student), *FAST, *POLICY, "--steps", "2"]
    assert rlvr.main(argv) == 0


# ---------------------------------------------------------------------------------------
# bad input: exit status 2 and one line


def _bad(main, argv, capsys, match):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and match in err, err


def test_missing_teacher(tmp_path, cache, capsys):
    argv = ["--out", str(tmp_path / "o"), "--cache", str(cache), *FAST, *POLICY,
            "--teacher", str(tmp_path / "no-such-teacher")]  # fmt: skip
    _bad(opd.main, argv, capsys, "teacher folder not found")
    # a user model without a teacher, where the objective needs one
    argv = ["--out", str(tmp_path / "o"), *FAST, "--model", str(tmp_path)]
    _bad(sft.main, argv, capsys, "needs a teacher")


def test_wrong_model_folder(tmp_path, cache, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--out", str(tmp_path / "o"), *FAST, *POLICY, "--model", str(empty)]
    _bad(rlvr.main, argv, capsys, "not a Hugging Face model folder")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    argv[argv.index(str(empty))] = str(junk)
    _bad(rlvr.main, argv, capsys, "cannot load model")


def test_incompatible_tokenizer(tmp_path, cache, capsys, opd_run):
    from paramgeom.drivers.models import build_model, save_model

    other = CharTokenizer("0123456789+=-")
    save_model(build_model("tiny", other, seed=0), tmp_path / "teacher", other)
    argv = ["--out", str(tmp_path / "o"), "--cache", str(cache), *FAST, *POLICY,
            "--teacher", str(tmp_path / "teacher")]  # fmt: skip
    _bad(opd.main, argv, capsys, "incompatible tokenizer")


def test_bad_flags_and_existing_out(tmp_path, cache, capsys, opd_run):
    with pytest.raises(SystemExit) as exc:
        opd.main(["--out", str(tmp_path), "--token-keep", "0"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    _bad(opd.main, ["--out", str(opd_run), *FAST], capsys, "already holds a run")
    argv = ["--out", str(tmp_path / "p"), *FAST, "--project-grad-from", str(tmp_path)]
    _bad(opd.main, argv, capsys, "--project-grad-from")


def test_module_entry_point_exit_status(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "paramgeom.drivers.rlvr", "--out", str(tmp_path / "o"),
           "--cache", str(tmp_path / "cache"), "--off-policy", "--teacher",
           str(tmp_path / "missing"), "--quiet"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "teacher folder not found" in p.stderr
