"""paramgeom.linalg.Sketch accumulation (``add`` / ``reset``): the sketches are linear in dW
(Tropp-Yurtsever-Udell-Cevher), so row blocks in space and increments in time add up to the
sketch of the whole difference. Float64 NumPy oracles; pairs from test_randomized_svd, whose
oracle is the exact difference of the stored inputs."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from test_randomized_svd import low_rank, make_pair, spectrum

from paramgeom.linalg import Sketch, _ops

try:
    from hypothesis import example, given
    from hypothesis import strategies as st
except ImportError:  # hypothesis is in the [test] extra; the fixed partitions still run
    given = None

SHAPE = (37, 23)  # odd sizes; rank 3 -> k = 7, s = 15
RANK = 3
SEED = 5
RTOL = 1e-5  # fp32 kernel products (DESIGN.md contract 3: 1e-5 relative)


def sketch_close(got: torch.Tensor, want, rtol: float = RTOL) -> None:
    """Elementwise ``allclose`` at ``rtol``, with an absolute floor of ``rtol * max|want|``
    (entries that cancel to ~0 carry the rounding of their larger terms)."""
    got = got.double().cpu().numpy()
    want = want.double().cpu().numpy() if isinstance(want, torch.Tensor) else want
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def oracle_sketches(dd: np.ndarray, sk: Sketch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, X, Z of ``dd`` in float64 NumPy, the test matrices redrawn from the documented recipe
    (CPU generator seeded with ``seed``, drawn in the order Omega, Psi, Phi, Theta)."""
    m, n = sk.shape
    k, s = sk.range_size, sk.core_size
    g = torch.Generator().manual_seed(sk.seed)
    omega, psi, phi, theta = (
        torch.randn(r, c, generator=g, dtype=torch.float64).numpy()
        for r, c in ((n, k), (k, m), (s, m), (s, n))
    )
    return dd @ omega, psi @ dd, phi @ dd @ theta.T


def old_update(sk: Sketch, w0: torch.Tensor, w1: torch.Tensor):
    """The pre-accumulation ``Sketch.update`` formula, verbatim (torch, same kernels)."""
    dev = w1.device
    right = _ops.diff_matmul(w0, w1, sk._right.to(dev)).to(sk.device)
    xt = _ops.diff_matmul(w0, w1, sk._psi_t.to(dev), transpose=True).to(sk.device)
    k = sk.range_size
    y = right[:, :k].to(sk.dtype).contiguous()
    z = (sk._phi @ right[:, k:]).to(sk.dtype)
    x = xt.T.to(sk.dtype).contiguous()
    return y, x, z


@functools.cache
def pair(dtype: torch.dtype):
    d = low_rank(*SHAPE, spectrum("geometric", min(SHAPE)), seed=4)
    return make_pair(d, dtype)


def blocks_of(cuts, m: int):
    """Row blocks ``[(start, stop), ...]`` between sorted ``cuts`` (repeats give empty blocks)."""
    edges = [0, *sorted(cuts), m]
    return list(zip(edges[:-1], edges[1:], strict=True))


def check_blocks_match_update(dtype, blocks, as_slice: bool) -> None:
    w0, w1, dd = pair(dtype)
    full = Sketch(SHAPE, RANK, seed=SEED).update(w0, w1)
    sk = Sketch(SHAPE, RANK, seed=SEED)
    for a, b in blocks:
        rows = slice(a, b) if as_slice else (a, b)
        assert sk.add(w0[a:b], w1[a:b], rows=rows) is sk
    y, x, z = oracle_sketches(dd, sk)
    for name, want in (("Y", y), ("X", x), ("Z", z)):
        sketch_close(getattr(sk, name), getattr(full, name))
        sketch_close(getattr(sk, name), want)
    for kk in (RANK, sk.range_size):
        s_blocks = sk.svd(kk)[1].numpy()
        s_full = full.svd(kk)[1].numpy()
        np.testing.assert_allclose(s_blocks, s_full, rtol=RTOL, atol=RTOL * s_full[0])


# ---------------------------------------------------------------------------------------
# 1. row blocks in space


FIXED_PARTITIONS = {
    "whole": [(0, 37)],
    "halves_reversed": [(19, 37), (0, 19)],
    "empty_and_one_row": [(0, 0), (0, 1), (1, 1), (1, 20), (20, 36), (36, 37), (37, 37)],
    "single_rows_shuffled": random.Random(0).sample([(i, i + 1) for i in range(37)], 37),
    "uneven_shuffled": [(30, 37), (0, 3), (17, 30), (3, 4), (4, 17)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(FIXED_PARTITIONS))
def test_row_blocks_fixed_partitions(dtype, name):
    """Fixed partitions (empty blocks, 1-row blocks, any order) give the sketches and the
    svd(k) singular values of one update of the whole matrix, rtol 1e-5."""
    blocks = FIXED_PARTITIONS[name]
    assert sorted(i for a, b in blocks for i in range(a, b)) == list(range(37))  # a partition
    check_blocks_match_update(dtype, blocks, as_slice=name != "uneven_shuffled")


if given is not None:

    @given(
        cuts=st.lists(st.integers(0, SHAPE[0]), max_size=8),
        order=st.integers(0, 2**16),
        dtype=st.sampled_from([torch.float32, torch.bfloat16]),
        as_slice=st.booleans(),
    )
    @example(cuts=[0, 5, 5, 6, 37], order=1, dtype=torch.float32, as_slice=True)
    @example(cuts=[36, 36, 1], order=7, dtype=torch.bfloat16, as_slice=False)
    def test_row_blocks_any_partition_any_order(cuts, order, dtype, as_slice):
        """Any partition of the rows (repeated cuts give empty blocks), added in any order."""
        blocks = blocks_of(cuts, SHAPE[0])
        random.Random(order).shuffle(blocks)
        check_blocks_match_update(dtype, blocks, as_slice)


# ---------------------------------------------------------------------------------------
# 2. increments in time


def test_increments_in_time_match_update_and_exact_svd():
    """dW = H_1 + H_2 + H_3 arrives as three fp32 states p_1, p_2, p_3 after p_0; ``add`` of
    each consecutive pair equals ``update(p_0, p_3)`` (rtol 1e-5), and the top-4 singular
    values of the rank-4 + noise dW (noise 1e-7 per entry: sigma_5 / sigma_1 ~ 8e-7) come out
    within 1e-4 relative of NumPy's exact SVD of the summed difference (one-pass sketch error,
    first order in sigma_5 / sigma_i: observed 6e-6 here, <= 2e-5 over 12 data/sketch seeds)."""
    m, n = 120, 90
    rng = np.random.default_rng(7)
    signal = low_rank(m, n, np.array([1.0, 0.6, 0.3, 0.15]), seed=3)
    total = 0.25 * signal / np.abs(signal).max() + 1e-7 * rng.standard_normal((m, n))
    weights = rng.random(3)
    parts = [total * (w / weights.sum()) + 1e-3 * rng.standard_normal((m, n)) for w in weights]
    parts[-1] += total - sum(parts)  # the three increments sum to ``total``
    states = [torch.from_numpy(1.0 + rng.random((m, n))).float()]
    for h in parts:
        states.append((states[-1].double() + torch.from_numpy(h)).float())
    dd = states[-1].double().numpy() - states[0].double().numpy()  # exact stored dW

    sk = Sketch((m, n), 4, seed=2)
    for a, b in zip(states[:-1], states[1:], strict=True):
        sk.add(a, b)
    full = Sketch((m, n), 4, seed=2).update(states[0], states[-1])
    y, x, z = oracle_sketches(dd, sk)
    for name, want in (("Y", y), ("X", x), ("Z", z)):
        sketch_close(getattr(sk, name), getattr(full, name))
        sketch_close(getattr(sk, name), want)
    so = np.linalg.svd(dd, compute_uv=False)[:4]
    np.testing.assert_allclose(sk.svd(4)[1].numpy(), so, rtol=1e-4)
    np.testing.assert_allclose(full.svd(4)[1].numpy(), so, rtol=1e-4)


def test_increments_then_row_blocks_combine():
    """Time and space together: one increment added whole, the next one in two row blocks."""
    w0, w1, dd = pair(torch.float32)
    mid = ((w0.double() + w1.double()) / 2).float()
    sk = Sketch(SHAPE, RANK, seed=SEED).add(w0, mid)
    sk.add(mid[20:], w1[20:], rows=(20, 37)).add(mid[:20], w1[:20], rows=slice(None, 20))
    y, x, z = oracle_sketches(dd, sk)
    for name, want in (("Y", y), ("X", x), ("Z", z)):
        sketch_close(getattr(sk, name), want)


# ---------------------------------------------------------------------------------------
# 3. reset / update


@pytest.mark.parametrize("sketch_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_update_is_reset_then_add_and_unchanged(dtype, sketch_dtype):
    """``update`` is bit-identical to the old formula (torch copy above) and to ``reset`` +
    ``add``; it matches the float64 NumPy oracle at rtol 1e-5 (1e-12 for float64 weights,
    which take the exact path)."""
    w0, w1, dd = pair(dtype)
    other = make_pair(low_rank(*SHAPE, spectrum("power2", min(SHAPE)), seed=9), dtype)
    sk = Sketch(SHAPE, RANK, seed=SEED, dtype=sketch_dtype)
    sk.update(*other[:2])  # something to replace
    sk.update(w0, w1)
    ref = Sketch(SHAPE, RANK, seed=SEED, dtype=sketch_dtype)
    old = old_update(ref, w0, w1)
    again = ref.update(*other[:2]).reset().add(w0, w1)
    fresh = Sketch(SHAPE, RANK, seed=SEED, dtype=sketch_dtype).add(w0, w1)  # add from nothing
    rtol = 1e-12 if dtype == torch.float64 else RTOL
    if sketch_dtype == torch.float32:
        rtol = max(rtol, 1e-6)
    for name, want_old, want in zip("YXZ", old, oracle_sketches(dd, sk), strict=True):
        got = getattr(sk, name)
        assert got.dtype == sketch_dtype and got.is_contiguous()
        assert torch.equal(got, want_old), name
        assert torch.equal(getattr(again, name), want_old), name
        assert torch.equal(getattr(fresh, name), want_old), name
        sketch_close(got, want, rtol=rtol)


def test_reset_zeroes_and_keeps_test_matrices():
    w0, w1, _ = pair(torch.float32)
    sk = Sketch(SHAPE, RANK, seed=SEED).update(w0, w1)
    mats = {a: getattr(sk, a).clone() for a in ("_omega", "_psi_t", "_phi", "_theta_t", "_right")}
    held = sk.Y
    assert sk.reset() is sk
    m, n = SHAPE
    k, s = sk.range_size, sk.core_size
    assert sk.Y.shape == (m, k) and sk.X.shape == (k, n) and sk.Z.shape == (s, s)
    assert not (sk.Y.any() or sk.X.any() or sk.Z.any())
    assert sk.Y.dtype == sk.X.dtype == sk.Z.dtype == torch.float64
    assert held.any(), "reset allocates fresh sketches, it does not zero a held reference"
    for a, v in mats.items():
        assert torch.equal(getattr(sk, a), v), a
    assert torch.all(sk.svd()[1] == 0)
    Sketch(SHAPE, RANK).reset().svd()  # reset alone makes svd() defined


def test_state_dict_is_a_snapshot():
    """``add`` accumulates in place: journaled state dicts and loaded ones must not move."""
    w0, w1, _ = pair(torch.float32)
    sk = Sketch(SHAPE, RANK, seed=SEED).update(w0, w1)
    state = sk.state_dict()
    saved = {k: v.clone() for k, v in state.items()}
    sk.add(w0, w1)
    back = Sketch.from_state_dict(state)
    back.add(w0, w1)
    for name in "YXZ":
        assert torch.equal(state[name], saved[name])
        assert torch.equal(getattr(back, name), getattr(sk, name))
        sketch_close(getattr(sk, name), 2 * saved[name])


# ---------------------------------------------------------------------------------------
# 4. bad input


def test_bad_blocks_and_rows():
    w0, w1, _ = pair(torch.float32)
    sk = Sketch(SHAPE, RANK, seed=SEED).update(w0, w1)
    before = [t.clone() for t in (sk.Y, sk.X, sk.Z)]
    bad_value = [
        # wrong block shape
        ((w0[:5], w1[:5], (0, 6)), "need a block of 6 rows, got 5"),
        ((w0[:5, :22], w1[:5, :22], (0, 5)), "block has 22 columns"),
        ((w0[:5], w1[:4], (0, 5)), "shape mismatch"),
        ((w0[:5], w1[:5], None), r"sketch is for \(37, 23\)"),
        ((w0[:0], w1[:0], (3, 4)), "need a block of 1 rows, got 0"),
        # rows outside the matrix
        ((w0[:5], w1[:5], (-5, 0)), "outside the matrix"),
        ((w0[:5], w1[:5], slice(33, 38)), "outside the matrix"),
        ((w0[:1], w1[:1], (37, 38)), "outside the matrix"),
        ((w0[:0], w1[:0], (5, 4)), "start must be <= stop"),
        ((w0[:5], w1[:5], slice(0, 10, 2)), "step 1"),
        # rows of the wrong length
        ((w0[:5], w1[:5], (0, 5, 1)), r"\(start, stop\) pair, got 3 entries"),
        ((w0[:5], w1[:5], (5,)), "got 1 entries"),
        ((w0[:5], w1[:5], ()), "got 0 entries"),
    ]
    for (a, b, rows), match in bad_value:
        with pytest.raises(ValueError, match=match):
            sk.add(a, b, rows=rows)
    for rows in (5, "0:5", (0.0, 5), (True, 5), {0, 5}):
        with pytest.raises(TypeError, match="rows"):
            sk.add(w0[:5], w1[:5], rows=rows)
    with pytest.raises(ValueError, match="shape mismatch"):
        sk.update(w0[:5], w1[:5])
    for t, b in zip((sk.Y, sk.X, sk.Z), before, strict=True):
        assert torch.equal(t, b), "a rejected add/update must leave the sketches alone"
    # numpy / torch integer bounds are accepted
    sk.reset().add(w0[2:9], w1[2:9], rows=(np.int64(2), torch.tensor(9)))
    assert sk.Y[2:9].any() and not sk.Y[:2].any() and not sk.Y[9:].any()
