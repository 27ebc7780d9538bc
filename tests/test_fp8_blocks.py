"""DeepSeek-style FP8 block scales: dequantisation against a float64 numpy oracle.

Oracle: w[i, j] = float64(q[i, j]) * float64(scale_inv[i // 128, j // 128]). A float8 value
has at most 4 significant bits and the scale 24, so the float64 product is exact; the
float32 result must be that product rounded once (error <= 2^-24 relative).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgeom.checkpoints.fp8 import (
    dequantize_blocks,
    fp8_max,
    is_fp8,
    is_scale_name,
    quantize_blocks,
    scale_name,
    scale_shape,
    weight_name,
)

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
# (mantissa bits, smallest subnormal exponent) of each format, for the quantisation bound
FORMATS = {E4M3: (3, -9), E5M2: (2, -16)}


def oracle(q: torch.Tensor, scale_inv: torch.Tensor, block: int = 128) -> np.ndarray:
    qf = q.to(torch.float64).numpy()
    s = scale_inv.to(torch.float64).numpy()
    m, n = qf.shape[-2:]
    full = np.repeat(np.repeat(s, block, axis=-2), block, axis=-1)[..., :m, :n]
    return qf * full


def random_weight(shape, seed=0, scale=0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float32) * scale
    # blocks of very different magnitude, so per-block scaling matters
    w[..., : min(128, shape[-2]), :] *= 100.0
    return w


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
@pytest.mark.parametrize("shape", [(300, 260), (128, 128), (1, 1), (129, 257), (5, 400)])
def test_round_trip_against_float64_oracle(fmt, shape):
    w = random_weight(shape)
    q, s = quantize_blocks(w, fmt)
    assert q.dtype == fmt and q.shape == w.shape
    assert s.dtype == torch.float32 and tuple(s.shape) == scale_shape(shape)

    exact = oracle(q, s)
    got64 = dequantize_blocks(q, s, out_dtype=torch.float64).numpy()
    np.testing.assert_array_equal(got64, exact)  # float64: the product is exact
    got32 = dequantize_blocks(q, s).numpy().astype(np.float64)
    assert np.all(np.abs(got32 - exact) <= 2.0**-24 * np.abs(exact))

    # quantisation error: half an ulp of the format, relative to the value, or half the
    # smallest subnormal (times the block scale) near zero; plus float32 division rounding.
    mant, sub = FORMATS[fmt]
    wf = w.double().numpy()
    sfull = np.repeat(np.repeat(s.double().numpy(), 128, 0), 128, 1)[: shape[0], : shape[1]]
    bound = 2.0 ** -(mant + 1) * np.abs(wf) * (1 + 2.0**-20) + 2.0 ** (sub - 1) * sfull
    assert np.all(np.abs(exact - wf) <= bound)

    # each block's largest magnitude lands on the format's largest finite value
    fmax = fp8_max(fmt)
    qa = np.abs(q.to(torch.float64).numpy())
    for bi in range(s.shape[0]):
        for bj in range(s.shape[1]):
            blk = qa[bi * 128 : (bi + 1) * 128, bj * 128 : (bj + 1) * 128]
            assert blk.max() == fmax


def test_format_maxima():
    assert fp8_max(E4M3) == 448.0
    assert fp8_max(E5M2) == 57344.0
    assert is_fp8(E4M3) and is_fp8(E5M2) and not is_fp8(torch.bfloat16)
    with pytest.raises(ValueError):
        fp8_max(torch.float32)


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
def test_zero_blocks_get_scale_one(fmt):
    w = torch.zeros(200, 130)
    w[150:, 0] = 1.0  # only block (1, 0) is non-zero
    q, s = quantize_blocks(w, fmt)
    assert s[0, 0] == 1.0 and s[0, 1] == 1.0 and s[1, 1] == 1.0
    assert s[1, 0] == pytest.approx(1.0 / fp8_max(fmt))
    assert torch.equal(dequantize_blocks(q, s), w)


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
@pytest.mark.parametrize(
    ("start", "stop"), [(0, 300), (0, 1), (127, 129), (128, 256), (130, 250), (299, 300), (5, 5)]
)
def test_row_start_slicing_equals_slicing_the_whole(fmt, start, stop):
    q, s = quantize_blocks(random_weight((300, 260), seed=1), fmt)
    whole = dequantize_blocks(q, s)
    part = dequantize_blocks(q[start:stop], s, row_start=start)
    assert torch.equal(part, whole[start:stop])
    # the scale grid may also be cut to the rows the slice needs
    if stop > start:
        b0, b1 = start // 128, (stop - 1) // 128 + 1
        cut = dequantize_blocks(q[start:stop], s[b0:b1], row_start=start - b0 * 128)
        assert torch.equal(cut, whole[start:stop])


def test_stacks_of_matrices():
    w = random_weight((3, 140, 200), seed=2)
    q, s = quantize_blocks(w)
    assert tuple(s.shape) == (3, 2, 2)
    whole = dequantize_blocks(q, s)
    for e in range(3):
        qe, se = quantize_blocks(w[e])
        assert torch.equal(q[e].view(torch.uint8), qe.view(torch.uint8))
        assert torch.equal(s[e], se)
        assert torch.equal(whole[e], dequantize_blocks(qe, se))
    assert torch.equal(dequantize_blocks(q[:, 130:], s, row_start=130), whole[:, 130:])
    np.testing.assert_array_equal(dequantize_blocks(q, s, out_dtype=torch.float64), oracle(q, s))


def test_out_dtype_and_other_block_sizes():
    q, s = quantize_blocks(random_weight((70, 50), seed=3), block=32)
    assert tuple(s.shape) == (3, 2)
    f32 = dequantize_blocks(q, s, block=32)
    np.testing.assert_allclose(f32.double().numpy(), oracle(q, s, block=32), rtol=2**-24)
    bf = dequantize_blocks(q, s, block=32, out_dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, f32.to(torch.bfloat16))


def test_empty_matrix():
    q = torch.zeros(0, 10).to(E4M3)
    out = dequantize_blocks(q, torch.ones(0, 1))
    assert out.shape == (0, 10) and out.dtype == torch.float32


def test_names():
    assert scale_name("model.layers.0.self_attn.q_proj.weight") == (
        "model.layers.0.self_attn.q_proj.weight_scale_inv"
    )
    assert scale_name("model.layers.0.mlp.experts.down_proj") == (
        "model.layers.0.mlp.experts.down_proj_scale_inv"
    )
    assert is_scale_name("a.weight_scale_inv") and not is_scale_name("a.weight")
    assert weight_name("a.weight_scale_inv") == "a.weight"
    with pytest.raises(ValueError):
        weight_name("a.weight")
    assert scale_shape((300, 260)) == (3, 3)
    assert scale_shape((4, 128, 129)) == (4, 1, 2)
    with pytest.raises(ValueError):
        scale_shape((5,))


def test_validation_messages():
    q, s = quantize_blocks(random_weight((300, 260)))
    with pytest.raises(ValueError, match="float8"):
        dequantize_blocks(q.float(), s)
    with pytest.raises(ValueError, match="scale_inv"):
        dequantize_blocks(q, s.to(E4M3))
    with pytest.raises(ValueError, match="does not match"):
        dequantize_blocks(q, s[:, :2])
    with pytest.raises(ValueError, match="need scale rows"):
        dequantize_blocks(q, s[:2])
    with pytest.raises(ValueError, match="need scale rows"):
        dequantize_blocks(q[:100], s, row_start=300)
    with pytest.raises(ValueError, match="row_start"):
        dequantize_blocks(q, s, row_start=-1)
    with pytest.raises(ValueError, match="block"):
        dequantize_blocks(q, s, block=0)
    with pytest.raises(ValueError, match="2-D"):
        dequantize_blocks(q[0], s[0])
    with pytest.raises(ValueError, match="dims"):
        dequantize_blocks(q, s[None])
    with pytest.raises(ValueError, match="non-finite"):
        quantize_blocks(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="2-D"):
        quantize_blocks(torch.ones(3))
    with pytest.raises(ValueError, match="float8"):
        quantize_blocks(torch.ones(3, 3), torch.bfloat16)
