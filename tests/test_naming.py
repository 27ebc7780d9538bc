"""Module type, layer, expert and prefix rules of tensor names."""

from __future__ import annotations

import pytest

from paramgeom.checkpoints.naming import pairing_key, parse_name


@pytest.mark.parametrize(
    ("name", "ndim", "module", "layer", "expert", "stack"),
    [
        ("model.layers.3.self_attn.q_proj.weight", 2, "q", 3, None, None),
        ("model.layers.3.self_attn.k_proj.weight", 2, "k", 3, None, None),
        ("model.layers.0.self_attn.v_proj.weight", 2, "v", 0, None, None),
        ("model.layers.12.self_attn.o_proj.weight", 2, "o", 12, None, None),
        ("model.layers.1.mlp.gate_proj.weight", 2, "gate", 1, None, None),
        ("model.layers.1.mlp.up_proj.weight", 2, "up", 1, None, None),
        ("model.layers.1.mlp.down_proj.weight", 2, "down", 1, None, None),
        ("model.embed_tokens.weight", 2, "embed", None, None, None),
        ("lm_head.weight", 2, "lm_head", None, None, None),
        ("model.norm.weight", 1, "norm", None, None, None),
        ("model.layers.2.input_layernorm.weight", 1, "norm", 2, None, None),
        ("model.layers.2.self_attn.q_proj.bias", 1, "bias", 2, None, None),
        ("model.layers.2.mlp.gate.weight", 2, "router", 2, None, None),
        (
            "model.layers.4.mlp.experts.7.down_proj.weight", 2, "expert", 4, 7,
            "model.layers.4.mlp.experts.down_proj.weight",
        ),
        (
            "model.layers.4.mlp.experts.gate_proj", 3, "expert", 4, None,
            "model.layers.4.mlp.experts.gate_proj",
        ),
        ("transformer.h.5.attn.c_proj.weight", 2, "o", 5, None, None),
        ("model.layers.0.rotary_emb.inv_freq", 1, "other", 0, None, None),
    ],
)  # fmt: skip
def test_parse_name(name, ndim, module, layer, expert, stack):
    info = parse_name(name, ndim)
    assert (info.module, info.layer, info.expert, info.stack) == (module, layer, expert, stack)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("model.layers.0.mlp.up_proj.weight", "layers.0.mlp.up_proj.weight"),
        ("layers.0.mlp.up_proj.weight", "layers.0.mlp.up_proj.weight"),
        ("module.model.norm.weight", "norm.weight"),
        ("_orig_mod.lm_head.weight", "lm_head.weight"),
        ("model.", "model."),
    ],
)
def test_pairing_key(name, key):
    assert pairing_key(name) == key
