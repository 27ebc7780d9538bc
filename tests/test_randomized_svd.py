"""paramgeom.linalg.randomized_svd against float64 NumPy/SciPy oracles (DESIGN.md item 4).

Pairs are built so that the oracle is the exact difference of the *stored* inputs:
fp32 pairs keep w0 in [1, 2) and |w1 - w0| < 1/2, so the kernels' fp32 subtraction is exact
(Sterbenz); bf16/fp16 differences of nearby values are exact in fp32 anyway.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramgeom.linalg import randomized_svd

sla = pytest.importorskip("scipy.linalg")

EPS = np.finfo(np.float64).eps


def spectrum(kind: str, r: int) -> np.ndarray:
    i = np.arange(1, r + 1, dtype=np.float64)
    if kind == "power2":
        return i**-2.0
    if kind == "power1":
        return i**-1.0
    if kind == "geometric":
        return 0.7 ** (i - 1)
    if kind == "flat":
        return np.ones(r)
    raise ValueError(kind)


def low_rank(m: int, n: int, s: np.ndarray, seed: int = 0) -> np.ndarray:
    """An m x n float64 matrix with singular values ``s`` (len <= min(m, n))."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((n, len(s))))[0]
    return (u * s) @ v.T


def make_pair(d: np.ndarray, dtype=torch.float32, seed: int = 1, scale: float = 0.25):
    """(w0, w1, oracle dW) with w1 - w0 ~= ``scale * d / max|d|`` stored in ``dtype``."""
    rng = np.random.default_rng(seed)
    dd = scale * d / max(np.abs(d).max(), 1e-300)
    w0 = torch.from_numpy(1.0 + rng.random(d.shape)).to(dtype)
    w1 = (w0.double() + torch.from_numpy(dd)).to(dtype)
    oracle = w1.double().numpy() - w0.double().numpy()
    return w0, w1, oracle


def oracle_svd(d: np.ndarray, k: int):
    u, s, vh = np.linalg.svd(d, full_matrices=False)
    return u[:, :k], s[:k], vh[:k].T


def max_sine(a: np.ndarray, b: np.ndarray) -> float:
    """Sine of the largest principal angle (SciPy oracle)."""
    return float(np.sin(np.max(sla.subspace_angles(a, b))))


def assert_orthonormal(q: torch.Tensor, tol: float = 1e-12) -> None:
    q = q.double().cpu()
    err = (q.T @ q - torch.eye(q.shape[1], dtype=torch.float64)).abs().max().item()
    assert err < tol, err


# ---------------------------------------------------------------------------------------
# exact path


@pytest.mark.parametrize("shape", [(120, 80), (80, 120)], ids=["tall", "wide"])
def test_exact_path_float64_weights(shape):
    d = low_rank(*shape, spectrum("geometric", 60))
    w0 = torch.from_numpy(np.random.default_rng(3).standard_normal(shape))
    w1 = w0 + torch.from_numpy(d)
    dd = w1.numpy() - w0.numpy()
    k = 12
    u, s, vh = randomized_svd(w0, w1, k)
    uo, so, vo = oracle_svd(dd, k)
    np.testing.assert_allclose(s.numpy(), so, rtol=1e-10)
    assert max_sine(u.numpy(), uo) < 1e-10
    assert max_sine(vh.T.numpy(), vo) < 1e-10
    assert_orthonormal(u)
    assert_orthonormal(vh.T)


@pytest.mark.parametrize("shape", [(150, 90), (90, 150)], ids=["tall", "wide"])
def test_exact_path_kernels_fp32(shape):
    d = low_rank(*shape, spectrum("power2", 50))
    w0, w1, dd = make_pair(d, torch.float32)
    k = 8
    u, s, vh = randomized_svd(w0, w1, k)
    uo, so, vo = oracle_svd(dd, k)
    assert u.dtype == s.dtype == vh.dtype == torch.float64
    assert u.shape == (shape[0], k) and s.shape == (k,) and vh.shape == (k, shape[1])
    # Singular values from the float64 Gram of exactly-formed differences.
    np.testing.assert_allclose(s.numpy(), so, rtol=1e-10)
    # The Gram side is float64-accurate; the other side goes through one fp32 product.
    gram_side, other = (vh.T.numpy(), u.numpy()) if shape[1] <= shape[0] else (u.numpy(), vh.T)
    og, oo = (vo, uo) if shape[1] <= shape[0] else (uo, vo)
    assert max_sine(gram_side, og) < 1e-9
    assert max_sine(np.asarray(other), oo) < 1e-5
    assert_orthonormal(u)
    assert_orthonormal(vh.T)


def test_exact_path_small_singular_values_caveat():
    """The Gram squares the condition number: sigma_i keeps relative accuracy only down to
    about sqrt(eps) * sigma_max. What is guaranteed is |s_i^2 - sigma_i^2| <~ eps sigma_1^2."""
    n = 60
    s_true = np.array([1.0, 1e-2, 1e-4, 1e-6, 1e-7, 1e-10, 1e-12])
    d = low_rank(100, n, s_true, seed=5)
    w0 = torch.zeros(100, n, dtype=torch.float64)
    w1 = torch.from_numpy(d)
    so = np.linalg.svd(d, compute_uv=False)[: len(s_true)]  # the oracle, not the gram
    _, s, _ = randomized_svd(w0, w1, len(s_true))
    s = s.numpy()
    # Absolute bound on the squares (the eigenvalue error of the Gram): always holds.
    assert np.all(np.abs(s**2 - so**2) <= 10 * n * EPS * so[0] ** 2)
    # Relative accuracy eps * (sigma_1 / sigma_i)^2: full for the top, gone below 1.5e-8.
    rel = np.abs(s - so) / so
    assert np.all(rel[:2] < 1e-12)
    assert rel[2] < 1e-7  # sigma = 1e-4: bound 10 n eps 1e8 ~ 1e-6
    assert rel[3] < 1e-2  # sigma = 1e-6: bound ~ 1e-2
    # sigma = 1e-10 and 1e-12 sit below sqrt(eps): only the absolute bound above applies.
    assert np.all(s[5:] < 1e-7)


def test_exact_path_first_k_of_full():
    d = low_rank(70, 40, spectrum("power1", 40))
    w0, w1, dd = make_pair(d, torch.float32)
    _, s_all, _ = randomized_svd(w0, w1, 40)
    _, s5, _ = randomized_svd(w0, w1, 5)
    np.testing.assert_allclose(s5.numpy(), s_all[:5].numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# randomized path


@pytest.mark.parametrize(
    ("kind", "sin_tol"), [("power2", 5e-3), ("geometric", 5e-6), ("power1", 0.2)]
)
@pytest.mark.parametrize("shape", [(400, 300), (300, 400)], ids=["tall", "wide"])
def test_randomized_decaying_spectra(kind, sin_tol, shape):
    """Default p = 10, q = 2: top singular values within 1e-3 relative; subspace error
    (sine of the largest principal angle) per spectrum. For sigma_i = 1/i the top-10
    subspace is barely separated from the 11th vector (gap 10%), so its bound is loose. The
    geometric one (0.7^i) converges to the floor of the fp32 products, about eps32 sigma_1 /
    (sigma_10 - sigma_11) = 5e-6 (measured 1.1e-6 on an AVX-512 Xeon, below 1e-6 on an AMD
    EPYC: the rounding of each machine's GEMM kernel)."""
    d = low_rank(*shape, spectrum(kind, min(shape)))
    w0, w1, dd = make_pair(d, torch.float32)
    k = 10
    u, s, vh = randomized_svd(w0, w1, k, seed=0, exact_threshold=0)
    uo, so, vo = oracle_svd(dd, k)
    np.testing.assert_allclose(s.numpy(), so, rtol=1e-3)
    assert max_sine(u.numpy(), uo) < sin_tol
    assert max_sine(vh.T.numpy(), vo) < sin_tol
    assert_orthonormal(u)
    assert_orthonormal(vh.T)
    # Top-5 are well separated in every spectrum here.
    assert max_sine(vh.T.numpy()[:, :5], vo[:, :5]) < max(sin_tol, 1e-2)


def test_randomized_power_iterations_help():
    d = low_rank(300, 200, spectrum("power1", 200))
    w0, w1, dd = make_pair(d, torch.float32)
    so = np.linalg.svd(dd, compute_uv=False)[:10]
    errs = []
    for q in (0, 1, 3):
        _, s, _ = randomized_svd(w0, w1, 10, power_iters=q, seed=1, exact_threshold=0)
        errs.append(np.max(np.abs(s.numpy() - so) / so))
    assert errs[2] < errs[0]
    assert errs[2] < 1e-3


def test_randomized_low_rank_exact():
    """A rank-5 difference is recovered to fp32 accuracy with no power iteration."""
    d = low_rank(200, 150, np.array([3.0, 2.0, 1.5, 1.0, 0.5]))
    w0, w1, dd = make_pair(d, torch.float32)
    u, s, vh = randomized_svd(w0, w1, 5, power_iters=0, seed=2, exact_threshold=0)
    uo, so, vo = oracle_svd(dd, 5)
    np.testing.assert_allclose(s.numpy(), so, rtol=1e-5)
    rec = (u * s) @ vh
    assert np.linalg.norm(rec.numpy() - dd) <= 1e-5 * np.linalg.norm(dd)


@pytest.mark.parametrize("exact_threshold", [0, 4096], ids=["randomized", "exact"])
def test_rank_deficient(exact_threshold):
    d = low_rank(90, 70, np.array([1.0, 0.5, 0.25]))
    w0, w1, dd = make_pair(d, torch.float32)
    u, s, vh = randomized_svd(w0, w1, 8, seed=0, exact_threshold=exact_threshold)
    so = np.linalg.svd(dd, compute_uv=False)[:8]
    np.testing.assert_allclose(s.numpy()[:3], so[:3], rtol=1e-6)
    assert np.all(s.numpy()[3:] <= 1e-5 * so[0])
    assert_orthonormal(u)
    assert_orthonormal(vh.T)
    rec = (u * s) @ vh
    assert np.linalg.norm(rec.numpy() - dd) <= 1e-5 * np.linalg.norm(dd)


@pytest.mark.parametrize("exact_threshold", [0, 4096], ids=["randomized", "exact"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_zero_difference(exact_threshold, dtype):
    w0 = torch.randn(40, 30).to(dtype)
    u, s, vh = randomized_svd(w0, w0.clone(), 4, seed=0, exact_threshold=exact_threshold)
    assert torch.all(s == 0)
    assert_orthonormal(u)
    assert_orthonormal(vh.T)


@pytest.mark.parametrize("shape", [(1, 37), (37, 1), (1, 1), (2, 300), (300, 2)])
@pytest.mark.parametrize("exact_threshold", [0, 4096], ids=["randomized", "exact"])
def test_thin_shapes(shape, exact_threshold):
    rng = np.random.default_rng(0)
    w0, w1, dd = make_pair(rng.standard_normal(shape), torch.float32)
    k = min(shape)
    u, s, vh = randomized_svd(w0, w1, k, seed=0, exact_threshold=exact_threshold)
    so = np.linalg.svd(dd, compute_uv=False)
    np.testing.assert_allclose(s.numpy(), so[:k], rtol=1e-6)
    rec = (u * s) @ vh
    np.testing.assert_allclose(rec.numpy(), dd, atol=1e-6 * np.abs(dd).max())


@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.bfloat16, 1e-3), (torch.float16, 1e-3), (torch.float32, 1e-3)]
)
@pytest.mark.parametrize("exact_threshold", [0, 4096], ids=["randomized", "exact"])
def test_input_dtypes(dtype, rtol, exact_threshold):
    """Oracle: the float64 SVD of the exact difference of the stored half-precision values
    (their fp32 difference is exact, so the exact path agrees to ~1e-10)."""
    d = low_rank(160, 120, spectrum("geometric", 120))
    w0, w1, dd = make_pair(d, dtype, scale=0.1)
    k = 6
    u, s, vh = randomized_svd(w0, w1, k, seed=0, exact_threshold=exact_threshold)
    uo, so, vo = oracle_svd(dd, k)
    tol = 1e-9 if exact_threshold else rtol
    np.testing.assert_allclose(s.numpy(), so, rtol=tol)
    # Half-precision rounding adds a noise floor to the spectrum; the top-3 stay separated.
    assert max_sine(vh.T.numpy()[:, :3], vo[:, :3]) < 1e-2


@pytest.mark.parametrize("exact_threshold", [0, 4096], ids=["randomized", "exact"])
def test_non_contiguous(exact_threshold):
    d = low_rank(120, 90, spectrum("geometric", 90))
    w0, w1, _ = make_pair(d, torch.float32)
    # Column-major views of the transposes, and strided row slices.
    for a, b in ((w0.T.contiguous().T, w1.T.contiguous().T), (w0[::2], w1[::2])):
        dd = b.double().numpy() - a.double().numpy()
        _, s, _ = randomized_svd(a, b, 5, seed=0, exact_threshold=exact_threshold)
        np.testing.assert_allclose(s.numpy(), np.linalg.svd(dd, compute_uv=False)[:5], rtol=1e-6)


def test_seed_reproducible_and_init():
    d = low_rank(200, 150, spectrum("power2", 150))
    w0, w1, dd = make_pair(d, torch.float32)
    a = randomized_svd(w0, w1, 6, seed=7, exact_threshold=0)
    b = randomized_svd(w0, w1, 6, seed=7, exact_threshold=0)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # init: subspace iteration from a perturbed copy of the answer converges to it.
    # (16 start columns for k = 6: convergence like (sigma_17 / sigma_6)^(2 q + 1).)
    uo, so, vo = oracle_svd(dd, 16)
    rng = np.random.default_rng(0)
    start = torch.from_numpy(np.linalg.qr(vo + 0.1 * rng.standard_normal(vo.shape))[0])
    u, s, vh = randomized_svd(w0, w1, 6, init=start, power_iters=2)
    np.testing.assert_allclose(s.numpy(), so[:6], rtol=1e-6)
    assert max_sine(vh.T.numpy(), vo[:, :6]) < 1e-5


def test_bad_inputs():
    w = torch.zeros(10, 8)
    with pytest.raises(ValueError, match="k must be >= 1"):
        randomized_svd(w, w, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        randomized_svd(w, w, -3)
    with pytest.raises(ValueError, match="exceeds min"):
        randomized_svd(w, w, 9)
    with pytest.raises(ValueError, match="shape mismatch"):
        randomized_svd(w, torch.zeros(10, 9), 2)
    with pytest.raises(ValueError, match="2-D"):
        randomized_svd(torch.zeros(10), torch.zeros(10), 1)
    with pytest.raises(ValueError, match="2-D"):
        randomized_svd(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), 1)
    with pytest.raises(TypeError, match="int"):
        randomized_svd(w, w, 2.0)
    with pytest.raises(ValueError, match="init"):
        randomized_svd(w, w, 3, init=torch.zeros(8, 2))
    with pytest.raises(ValueError, match="init"):
        randomized_svd(w, w, 3, init=torch.zeros(7, 4))
    with pytest.raises(ValueError, match=">= 0"):
        randomized_svd(w, w, 3, power_iters=-1, exact_threshold=0)


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (17, 17)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_diff_svdvals_matches_numpy(shape, dtype):
    from paramgeom.linalg import diff_svdvals

    g = torch.Generator().manual_seed(7)
    w0 = torch.randn(*shape, generator=g).to(dtype)
    w1 = (w0.float() + 0.1 * torch.randn(*shape, generator=g)).to(dtype)
    want = np.linalg.svd(w1.double().numpy() - w0.double().numpy(), compute_uv=False)
    got = diff_svdvals(w0, w1)
    assert got.dtype == torch.float64 and got.shape == (min(shape),)
    # fp32 products of exactly formed differences; Gram eigenvalues: top values to ~1e-6.
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6 * want[0])
    np.testing.assert_allclose(diff_svdvals(None, w1).numpy(),
                               np.linalg.svd(w1.double().numpy(), compute_uv=False),
                               rtol=1e-5, atol=1e-6 * want[0])  # fmt: skip
