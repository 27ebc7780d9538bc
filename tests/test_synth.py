"""Synthetic checkpoints: layouts open with the reader; the update has the stated spectrum.

Spectral checks use a float64 numpy SVD of ``tuned - base`` (both read back from disk).
The tuned checkpoint is ``round_dtype(base + dW)`` with ``dW`` formed in float32, so
``tuned - base = dW + E`` with ``|E_ij| <= u |tuned_ij|`` (u = 2^-9 for bf16, about 2^-24
for fp32 plus the float32 sum's rounding); by Weyl's inequality every singular value of
``tuned - base`` is within ``||E||_2 <= ||E||_F <= u ||tuned||_F`` of dW's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from paramgeom.checkpoints.fp8 import dequantize_blocks, scale_name
from paramgeom.checkpoints.reader import open_checkpoint
from paramgeom.checkpoints.synth import (
    SynthSpec,
    _assign_shards,
    add_parser,
    parse_size,
    spec_nbytes,
    target_bytes_spec,
    tensor_names,
    write_checkpoint,
    write_pair,
)

TINY = {"hidden": 128, "layers": 2, "intermediate": 200, "vocab": 256, "heads": 2, "kv_heads": 1}
U_BF16 = 2.0**-9
U_FP32 = 2.0**-20  # float32 rounding of the sum plus the rank-r product's rounding, generously


def tiny(**kw) -> SynthSpec:
    return SynthSpec(**{**TINY, **kw})


def values(ck, name: str) -> torch.Tensor:
    """Stored values as float64 (FP8 dequantised with its block scales)."""
    t = ck.read(name)
    if t.dtype == torch.float8_e4m3fn:
        return dequantize_blocks(t, ck.read(scale_name(name)), out_dtype=torch.float64)
    return t.to(torch.float64)


def diff_svals(base_ck, tuned_ck, base_name, tuned_name, expert=None):
    b, t = values(base_ck, base_name), values(tuned_ck, tuned_name)
    if expert is not None:
        b, t = b[expert], t[expert]
    d = (t - b).numpy()
    return np.linalg.svd(d, compute_uv=False), float(np.linalg.norm(t.numpy())), b


LAYOUTS = [
    {"arch": "llama", "dtype": "bf16", "shards": 1},
    {"arch": "llama", "dtype": "fp32", "shards": 3, "tie_embeddings": True},
    {"arch": "llama", "dtype": "fp8", "shards": 1},
    {"arch": "moe", "dtype": "bf16", "shards": 2, "expert_layout": "split"},
    {"arch": "moe", "dtype": "bf16", "shards": 1, "expert_layout": "fused", "experts": 3},
    {"arch": "moe", "dtype": "fp8", "shards": 2, "expert_layout": "fused"},
    {"arch": "moe", "dtype": "fp8", "shards": 1, "expert_layout": "split", "experts": 2},
]


@pytest.mark.parametrize("kw", LAYOUTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_layouts_open_with_expected_names_shapes_dtypes(tmp_path, kw):
    spec = tiny(layers=1, **kw)
    pair = write_pair(tmp_path, spec)
    expected = tensor_names(spec)
    for folder in (pair.base, pair.tuned):
        with open_checkpoint(folder) as ck:
            got = {n: (i.shape, i.dtype) for n, i in ck.tensors.items()}
            assert got == expected
            assert len(ck.files) == spec.shards
            assert (folder / "model.safetensors.index.json").exists() == (spec.shards > 1)
            cfg = json.loads((folder / "config.json").read_text())
            assert cfg["hidden_size"] == spec.hidden
            assert cfg["num_hidden_layers"] == spec.layers
            assert cfg["tie_word_embeddings"] == spec.tie_embeddings
            assert cfg["model_type"] == ("mixtral" if spec.arch == "moe" else "llama")
            # a weight and its block scale share a shard
            for name, info in ck.tensors.items():
                if name + "_scale_inv" in ck.tensors:
                    assert ck.tensors[name + "_scale_inv"].file == info.file
    p = "model.layers.0."
    assert ("lm_head.weight" in expected) != spec.tie_embeddings
    assert expected["model.embed_tokens.weight"] == ((spec.vocab, spec.hidden), torch.bfloat16) or (
        spec.dtype != "fp8"
    )
    if spec.arch == "moe":
        E = spec.experts
        assert expected[p + "mlp.gate.weight"][0] == (E, spec.hidden)
        if spec.expert_layout == "split":
            assert expected[p + f"mlp.experts.{E - 1}.down_proj.weight"][0] == (128, 200)
        else:
            assert expected[p + "mlp.experts.gate_proj"][0] == (E, 200, 128)
            assert expected[p + "mlp.experts.down_proj"][0] == (E, 128, 200)
    if spec.dtype == "fp8":
        q = p + "self_attn.q_proj.weight"
        assert expected[q][1] == torch.float8_e4m3fn
        assert expected[scale_name(q)] == ((1, 1), torch.float32)
        down = p + (
            "mlp.down_proj.weight" if spec.arch == "llama" else "mlp.experts.0.down_proj.weight"
        )
        if spec.expert_layout == "fused" and spec.arch == "moe":
            down = p + "mlp.experts.down_proj"
            assert expected[scale_name(down)][0] == (spec.experts, 1, 2)
        else:
            assert expected[scale_name(down)][0] == (1, 2)
        assert expected[p + "input_layernorm.weight"][1] == torch.bfloat16


@pytest.mark.parametrize(("dtype", "u"), [("bf16", U_BF16), ("fp32", U_FP32)], ids=["bf16", "fp32"])
def test_update_has_requested_rank_and_singular_values(tmp_path, dtype, u):
    spec = tiny(arch="moe", expert_layout="fused", experts=2, layers=1, dtype=dtype, seed=5)
    pair = write_pair(tmp_path, spec)
    checked = 0
    with open_checkpoint(pair.base) as b, open_checkpoint(pair.tuned) as t:
        for key, (rank, s) in pair.updates.items():
            name, expert = key, None
            if key.endswith("]"):
                name, e = key[:-1].split("[")
                expert = int(e)
            assert rank == min(spec.update_rank, *b.tensors[name].shape[-2:])
            sv, tuned_norm, base_vals = diff_svals(b, t, name, pair.tuned_names[name], expert)
            tol = u * tuned_norm
            assert np.all(np.abs(sv[:rank] - s) <= tol), (key, sv[:rank], s, tol)
            assert np.all(sv[rank:] <= tol), (key, sv[rank : rank + 2], tol)
            assert s[-1] > tol  # the rank is visible above the rounding
            # ||dW||_F / ||W0||_F is about update_scale
            rel = np.linalg.norm(s) / float(np.linalg.norm(base_vals.numpy()))
            assert rel == pytest.approx(spec.update_scale, rel=0.1)
            checked += 1
    assert checked == len(pair.updates) > 8
    assert any(k.endswith("[1]") for k in pair.updates)


def test_changed_fraction_leaves_others_bitwise_unchanged(tmp_path):
    spec = tiny(changed_fraction=0.5, dtype="fp8", layers=2)
    pair = write_pair(tmp_path, spec)
    matrices = [n for n in pair.updates]
    changed = set(pair.changed)
    n_changed = sum(n in changed for n in matrices)
    assert n_changed == round(0.5 * len(matrices))
    with open_checkpoint(pair.base) as b, open_checkpoint(pair.tuned) as t:
        for name in b.tensors:
            weight = name.removesuffix("_scale_inv")
            same = torch.equal(b.read(name).view(torch.uint8), t.read(name).view(torch.uint8))
            assert same == (weight not in changed), name
            if weight in pair.updates and weight not in changed:
                assert pair.updates[weight][0] == 0 and len(pair.updates[weight][1]) == 0
        # FP8 tuned: dequantised values near base + update (requantisation noise <= 2^-4)
        q = "model.layers.0.self_attn.q_proj.weight"
        if q in changed:
            d = values(t, q) - values(b, q)
            assert float(d.norm() / values(b, q).norm()) < 2.0**-4 + 2 * spec.update_scale


def test_prefix_and_dtype_of_the_tuned_side(tmp_path):
    spec = tiny(dtype="fp32", layers=1)
    pair = write_pair(tmp_path, spec, tuned_prefix="", tuned_dtype="bf16")
    with open_checkpoint(pair.base) as b, open_checkpoint(pair.tuned) as t:
        assert "model.norm.weight" in b.tensors and "norm.weight" in t.tensors
        assert "lm_head.weight" in b.tensors and "lm_head.weight" in t.tensors
        assert all(not n.startswith("model.") for n in t.tensors)
        assert {i.dtype for i in b.tensors.values()} == {torch.float32}
        assert {i.dtype for i in t.tensors.values()} == {torch.bfloat16}
        assert (
            pair.tuned_names["model.layers.0.mlp.up_proj.weight"] == "layers.0.mlp.up_proj.weight"
        )
        for bn, tn in pair.tuned_names.items():
            assert b.tensors[bn].shape == t.tensors[tn].shape
        name = "model.layers.0.self_attn.o_proj.weight"
        rank, s = pair.updates[name]
        sv, tuned_norm, _ = diff_svals(b, t, name, pair.tuned_names[name])
        assert np.all(np.abs(sv[:rank] - s) <= U_BF16 * tuned_norm)


def test_trajectory_steps_scale_the_same_directions(tmp_path):
    spec = tiny(dtype="fp32", layers=1, update_rank=3)
    pair = write_pair(tmp_path, spec, steps=[10, 2, 5])
    assert list(pair.checkpoints) == [2, 5, 10]
    assert pair.checkpoints[10] == tmp_path / "checkpoint-10"
    for f in pair.tuned.glob("*.safetensors"):
        assert (pair.checkpoints[10] / f.name).read_bytes() == f.read_bytes()
    name = "model.layers.0.mlp.down_proj.weight"
    rank, s = pair.updates[name]
    with open_checkpoint(pair.base) as b:
        w0 = values(b, name).numpy()
    vs = {}
    for step, folder in pair.checkpoints.items():
        with open_checkpoint(folder) as c:
            d = values(c, name).numpy() - w0
        _, sv, vt = np.linalg.svd(d)
        tol = U_FP32 * np.linalg.norm(d + w0)
        np.testing.assert_allclose(sv[:rank], step / 10 * s, rtol=0, atol=tol)
        assert np.all(sv[rank:] <= tol)
        vs[step] = vt[:rank].T
    for step in (2, 5):
        sim = np.linalg.norm(vs[step].T @ vs[10]) ** 2 / rank  # Sim_K with K = rank
        assert sim == pytest.approx(1.0, abs=1e-6)


def test_deterministic_from_seed(tmp_path):
    spec = tiny(layers=1)
    a = write_pair(tmp_path / "a", spec)
    b = write_pair(tmp_path / "b", spec)
    c = write_pair(tmp_path / "c", tiny(layers=1, seed=1))
    for role in ("base", "tuned"):
        fa = (a.root / role / "model.safetensors").read_bytes()
        assert fa == (b.root / role / "model.safetensors").read_bytes()
        assert fa != (c.root / role / "model.safetensors").read_bytes()


def test_rewriting_with_fewer_shards_leaves_no_stale_files(tmp_path):
    write_pair(tmp_path, tiny(layers=1, shards=3))
    pair = write_pair(tmp_path, tiny(layers=1, shards=1))
    assert sorted(p.name for p in pair.base.iterdir()) == ["config.json", "model.safetensors"]
    with open_checkpoint(pair.base) as ck:
        assert len(ck.files) == 1


@pytest.mark.parametrize(
    ("target", "kw"),
    [
        (3_000_000, {}),
        (200_000_000, {}),
        (2_000_000_000, {}),
        (2_000_000_000, {"arch": "moe", "dtype": "fp8"}),
        (50_000_000, {"arch": "moe", "expert_layout": "fused", "dtype": "fp32"}),
    ],
)
def test_size_targeting_within_20_percent(target, kw):
    spec = target_bytes_spec(target, **kw)
    assert abs(spec_nbytes(spec) - target) <= 0.2 * target
    assert spec.hidden % spec.heads == 0 and spec.heads % spec.kv_heads == 0


def test_size_targeting_on_disk(tmp_path):
    target = 2_000_000
    spec = target_bytes_spec(target, shards=2)
    pair = write_pair(tmp_path, spec)
    on_disk = sum(p.stat().st_size for p in pair.base.glob("*.safetensors"))
    assert abs(on_disk - target) <= 0.2 * target
    assert pair.nbytes["base"] == spec_nbytes(spec)


def test_assign_shards_contiguous_balanced_non_empty():
    sizes = [5, 1, 1, 1, 10, 2, 2, 2, 2, 100, 1]
    for n in range(1, len(sizes) + 1):
        a = _assign_shards(sizes, n)
        assert a == sorted(a) and sorted(set(a)) == list(range(n))
    a = _assign_shards([10] * 12, 4)
    assert [a.count(k) for k in range(4)] == [3, 3, 3, 3]
    with pytest.raises(ValueError):
        _assign_shards([1, 2], 3)


def test_write_checkpoint_custom_tensors(tmp_path):
    tensors = {f"w{i}": torch.full((16, 16), float(i)) for i in range(5)}
    tensors["q.weight"] = torch.ones(8, 8).to(torch.float8_e4m3fn)
    tensors["q.weight_scale_inv"] = torch.ones(1, 1)
    folder = write_checkpoint(tmp_path / "ck", tensors, tiny(), shards=3)
    with open_checkpoint(folder) as ck:
        assert set(ck.tensors) == set(tensors) and len(ck.files) == 3
        assert ck.tensors["q.weight"].file == ck.tensors["q.weight_scale_inv"].file
        for n, t in tensors.items():
            assert torch.equal(ck.read(n).view(torch.uint8), t.view(torch.uint8))


def test_spec_validation(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        SynthSpec(arch="gpt")
    with pytest.raises(ValueError, match="experts"):
        SynthSpec(experts=3)
    with pytest.raises(ValueError, match="heads"):
        SynthSpec(hidden=100, heads=3)
    with pytest.raises(ValueError, match="changed_fraction"):
        SynthSpec(changed_fraction=1.5)
    assert SynthSpec(arch="moe").experts == 4
    with pytest.raises(ValueError, match="shards"):
        write_pair(tmp_path / "x", tiny(layers=1, shards=1000))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_base_decay_gives_base_spectra_falling_as_the_power(tmp_path, arch):
    """``base_decay = a``: every base matrix is the plain one's Gaussian draw with column j
    scaled by (j+1)^-a (mean square of the scales 1), so its singular values fall about as
    i^-a (fitted slope of log s_i against log i over the top half within 0.15 of -a, where a
    Gaussian matrix's is flat); norms untouched; the update the same as without it."""
    kw = {"arch": arch, "expert_layout": "fused"} if arch == "moe" else {}
    plain = write_pair(tmp_path / "plain", tiny(**kw))
    decayed = write_pair(tmp_path / "decayed", tiny(base_decay=0.8, **kw))
    names = tensor_names(tiny(**kw))
    b0, t0 = open_checkpoint(plain.base), open_checkpoint(plain.tuned)
    b1, t1 = open_checkpoint(decayed.base), open_checkpoint(decayed.tuned)
    for name in names:
        w_plain, w = values(b0, name), values(b1, name)
        if w.dim() == 1:
            assert torch.equal(w, w_plain)
            continue
        scale = torch.arange(1, w.shape[-1] + 1, dtype=torch.float64) ** -0.8
        scale /= scale.square().mean().sqrt()
        want = w_plain * scale  # the same Gaussian draw, columns scaled (bf16 rounding apart)
        # two roundings to bf16 (8 significant bits), each within 2^-8 relative
        assert bool(((w - want).abs() <= 2**-7 * want.abs() + 1e-30).all()), name
        mat = w[0] if w.dim() == 3 else w
        if min(mat.shape) >= 64:
            s = np.linalg.svd(mat.numpy(), compute_uv=False)
            half = np.arange(1, len(s) // 2 + 1)
            slope = np.polyfit(np.log(half), np.log(s[: len(half)]), 1)[0]
            assert abs(slope + 0.8) < 0.15, (name, slope)
        # the update is the same: tuned - base differs only by the tuned dtype's rounding
        d_plain = values(t0, name) - w_plain
        d = values(t1, name) - w
        bound = U_BF16 * float(values(t1, name).abs().max()) * 2
        assert float((d - d_plain).abs().max()) <= bound, name
    with pytest.raises(ValueError, match="base_decay"):
        SynthSpec(base_decay=-1.0)
    with pytest.raises(ValueError, match="base_decay"):
        SynthSpec(base_decay=float("nan"))


@pytest.mark.parametrize("arch", ["llama", "moe"])
def test_base_spikes_put_singular_values_far_above_the_bulk(tmp_path, arch):
    """``base_spikes = N``: every base matrix (every expert of a fused stack) has N singular
    values near ``spike_size`` down to half of it times the Gaussian draw's largest (within
    that largest, the bulk's pull), the next one at the bulk's edge; norms untouched; the
    update the same as without them (the tuned dtype's rounding apart)."""
    kw = {"arch": arch, "expert_layout": "fused"} if arch == "moe" else {}
    plain = write_pair(tmp_path / "plain", tiny(**kw))
    spiked = write_pair(tmp_path / "spiked", tiny(base_spikes=3, spike_size=20.0, **kw))
    b0, t0 = open_checkpoint(plain.base), open_checkpoint(plain.tuned)
    b1, t1 = open_checkpoint(spiked.base), open_checkpoint(spiked.tuned)
    for name in tensor_names(tiny(**kw)):
        w_plain, w = values(b0, name), values(b1, name)
        if w.dim() == 1:
            assert torch.equal(w, w_plain)
            continue
        m, n = w.shape[-2:]
        edge = 0.02 * (m**0.5 + n**0.5)
        want = 20.0 * edge * np.linspace(1.0, 0.5, 3)
        for mat in w.reshape(-1, m, n):
            s = np.linalg.svd(mat.numpy(), compute_uv=False)
            assert np.all(np.abs(s[:3] - want) <= 1.2 * edge), (name, s[:4] / edge)
            assert s[3] <= 1.2 * edge, (name, s[3] / edge)
        d_plain = values(t0, name) - w_plain
        d = values(t1, name) - w
        bound = U_BF16 * float(values(t1, name).abs().max()) * 2
        assert float((d - d_plain).abs().max()) <= bound, name
    bad_specs = [{"base_spikes": -1}, {"spike_size": 0.0}, {"spike_size": float("nan")}]
    bad_specs += [{"spike_size": float("inf")}, {"spike_size": 1e7}]
    for bad in bad_specs:
        with pytest.raises(ValueError, match=next(iter(bad))):
            SynthSpec(**bad)
    args = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
        ["OUT", "--base-spikes", "4", "--spike-size", "50"]
    )
    assert (args.base_spikes, args.spike_size) == (4, 50.0)


def test_parse_size():
    assert parse_size("200MB") == 200_000_000
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("4096") == 4096
    for bad in ("two GB", "5XB", "", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="paramgeom")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(tmp_path, capsys):
    out = tmp_path / "pair"
    argv = ["synth", str(out), "--hidden", "128", "--layers", "1", "--vocab", "128"]
    argv += ["--intermediate", "64", "--heads", "2", "--kv-heads", "1", "--steps", "3,6"]
    argv += ["--dtype", "fp32", "--tuned-dtype", "bf16", "--shards", "2", "--quiet"]
    assert _cli(argv) == 0
    text = capsys.readouterr().out
    assert "base" in text and "checkpoint-6" in text
    for role in ("base", "tuned", "checkpoint-3", "checkpoint-6"):
        with open_checkpoint(out / role) as ck:
            assert len(ck.files) == 2
    assert _cli(["synth", str(tmp_path / "sized"), "--size", "1MB", "--quiet"]) == 0
    assert _cli(["synth", str(tmp_path / "bad"), "--experts", "3", "--quiet"]) == 2
    assert "experts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _cli(["synth", str(tmp_path / "bad"), "--size", "lots"])
    assert exc.value.code == 2
