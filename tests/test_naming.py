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


def _module_uncached(name: str, ndim: int) -> str:
    """The module rule as written before the per-spelling cache: every pattern on the name."""
    from paramgeom.checkpoints.naming import _MODULE_PATTERNS

    for module, pattern in _MODULE_PATTERNS:
        if pattern.search(name) and not (module == "router" and ndim != 2):
            return module
    return "other"


_PIECES = (
    "model", "layers", "h", "blocks", "layer", "0", "7", "12", "001", "self_attn", "mlp",
    "q_proj", "k_proj", "wq", "w1", "w2", "w3", "c_fc", "c_proj", "dense", "gate", "router",
    "moe", "block_sparse_moe", "ln_1", "ln_f", "norm", "input_layernorm", "norm2",
    "embed_tokens", "wte", "lm_head", "output", "experts", "weight", "bias", "1e3", "x9",
)  # fmt: skip


def test_module_type_is_the_same_with_any_layer_number():
    """parse_name runs the module patterns once per spelling with its numeric components
    replaced: on every name it must give what the patterns give on the name itself."""
    import random

    rng = random.Random(0)
    names = ["lm_head.weight", "12.weight", "7", "model.7.weight", "x.0.norm.bias"]
    for _ in range(20000):
        names.append(".".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 7))))
    seen = 0
    for name in names:
        for ndim in (1, 2, 3):
            info = parse_name(name, ndim)
            if info.module == "expert":
                continue
            assert info.module == _module_uncached(name, ndim), (name, ndim)
            seen += 1
    assert seen > 30000


def test_pairing_key_strips_only_wrapper_prefixes():
    assert pairing_key("layers.0.weight") == "layers.0.weight"
    assert pairing_key("module._orig_mod.model.x") == "x"
    assert pairing_key("model.") == "model."
