"""``paramgeom.linalg.eigen`` (the subset eigensolver behind the exact spectra) and the
symmetric-block Gram of the CPU fallback, against float64 NumPy oracles."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from windows import window_widths

from paramgeom._backends import cpu as cpu_backend
from paramgeom.linalg import eigenvalues_desc, top_eigenpairs


def _gram(n: int, m: int, seed: int, decay: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g, dtype=torch.float64)
    a = a * torch.arange(1, n + 1, dtype=torch.float64) ** -decay
    return a.T @ a


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (64, 8), (257, 32), (300, 300)])
@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_top_eigenpairs_match_the_float64_oracle(n, k, decay):
    g = _gram(n, n + 13, seed=n + k, decay=decay)
    want_vals, want_vecs = np.linalg.eigh(g.numpy())
    want_vals, want_vecs = want_vals[::-1][:k], want_vecs[:, ::-1][:, :k]
    vals, vecs = top_eigenpairs(g, k)
    assert vals.shape == (k,) and vecs.shape == (n, k) and vals.dtype == torch.float64
    np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-12, atol=1e-12 * want_vals[0])
    assert torch.all(vals[:-1] >= vals[1:])
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    # Vectors up to sign (and rotation within clusters): the subspaces agree.
    if k < n:
        assert np.rad2deg(subspace_angles(vecs.numpy(), want_vecs)).max() < 1e-8
    # The residual of each pair is at rounding level.
    res = g @ vecs - vecs * vals
    assert float(res.abs().max()) < 1e-10 * float(vals[0])


@pytest.mark.parametrize("decay", [0.0, 0.7])
def test_float32_reduction_then_float64_ritz_matches_the_oracle(monkeypatch, decay):
    """The large-n path (float32 syevr on a window, float64 Rayleigh-Ritz), forced on a
    small matrix: eigenvalues to 1e-9 relative, the top-K subspace within 1e-3 degree,
    vectors orthonormal in float64."""
    from paramgeom.linalg import eigen

    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    windows = []
    real = eigen.top_window
    monkeypatch.setattr(eigen, "top_window", lambda *a, **kw: windows.append(1) or real(*a, **kw))
    n, k = 300, 37
    g = _gram(n, 400, seed=7, decay=decay)
    want_vals, want_vecs = np.linalg.eigh(g.numpy())
    want_vals, want_vecs = want_vals[::-1][:k], want_vecs[:, ::-1][:, :k]
    vals, vecs = top_eigenpairs(g, k)
    assert windows == [1]
    np.testing.assert_allclose(vals.numpy(), want_vals, rtol=1e-9)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(k), atol=1e-12)
    assert np.rad2deg(subspace_angles(vecs.numpy(), want_vecs)).max() < 1e-3


def test_top_eigenpairs_symmetrises_and_checks_k():
    g = _gram(20, 30, seed=1)
    skew = torch.triu(torch.ones(20, 20, dtype=torch.float64), 1) * 1e-3
    vals, _ = top_eigenpairs(g + skew, 4)  # the symmetric part is what is solved
    want = np.linalg.eigvalsh((g + 0.5 * (skew + skew.T)).numpy())[::-1][:4]
    np.testing.assert_allclose(vals.numpy(), want, rtol=1e-12)
    for bad in (0, 21):
        with pytest.raises(ValueError, match="k must be in"):
            top_eigenpairs(g, bad)
    with pytest.raises(ValueError, match="square"):
        top_eigenpairs(torch.zeros(3, 4, dtype=torch.float64), 1)


def test_zero_and_repeated_eigenvalues():
    """A zero matrix and an identity (every eigenvalue repeated): eigenvalues exact, vectors
    orthonormal, whichever basis of the repeated eigenspace is returned."""
    for g, value in ((torch.zeros(9, 9, dtype=torch.float64), 0.0),
                     (torch.eye(9, dtype=torch.float64), 1.0)):  # fmt: skip
        vals, vecs = top_eigenpairs(g, 4)
        assert torch.all(vals == value)
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(4), atol=1e-12)
        assert torch.all(eigenvalues_desc(g) == value)


@pytest.mark.parametrize("syevr_max", [0, 10_000], ids=["torch-eigvalsh", "scipy-syevr"])
def test_eigenvalues_desc_match_the_oracle(monkeypatch, syevr_max):
    """Both CPU solvers (SciPy's ``syevr`` up to ``SYEVR_VALUES_MAX``, torch's above) give
    the oracle's eigenvalues to float64 accuracy; the size rule picks the solver."""
    from paramgeom.linalg import eigen

    monkeypatch.setattr(eigen, "SYEVR_VALUES_MAX", syevr_max)
    calls = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda a: calls.append(a.shape) or real(a))
    g = _gram(129, 200, seed=3, decay=1.0)
    want = np.linalg.eigvalsh(g.numpy())[::-1]
    got = eigenvalues_desc(g)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-13 * want[0])
    assert calls == ([(129, 129)] if syevr_max == 0 else [])


@pytest.mark.parametrize("n", [256, 257, 600])
@pytest.mark.parametrize("with_x0", [True, False])
def test_gram_blocks_upper_triangle_equals_the_full_product(monkeypatch, n, with_x0):
    """The CPU fallback computes the upper block triangle and mirrors it: with G's earlier
    content kept, alpha applied once, odd column counts crossing block edges, and row blocks
    shrunk so that several are summed."""
    monkeypatch.setattr(cpu_backend, "GRAM_TILE_ELEMS", 1)
    monkeypatch.setattr(cpu_backend, "GRAM_MIN_ROWS", 37)
    g = torch.Generator().manual_seed(n)
    x = torch.randn(101, n, generator=g).to(torch.bfloat16)
    x0 = torch.randn(101, n, generator=g).to(torch.bfloat16) if with_x0 else None
    G0 = torch.randn(n, n, generator=g, dtype=torch.float64)  # not symmetric on purpose
    G = G0.clone()
    cpu_backend.gram_update_blocks(G, x, x0, -0.5)
    d = x.double() - (x0.double() if with_x0 else 0.0)
    want = G0 - 0.5 * (d.T @ d)
    torch.testing.assert_close(G, want, rtol=1e-13, atol=1e-12)


# ---------------------------------------------------------------------------------------
# randomized_svd.exact_svd's float32-then-Rayleigh-Ritz path (CPU, min(m, n) >= RITZ_MIN)


def _weights(m: int, n: int, seed: int, decay: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=g) * 0.02
    return (a * torch.arange(1, n + 1, dtype=torch.float32) ** -decay).bfloat16()


@pytest.mark.parametrize("shape", [(700, 520), (520, 700)])
@pytest.mark.parametrize("decay", [0.0, 0.8])
@pytest.mark.parametrize("with_base", [False, True])
def test_exact_svd_float32_then_ritz_matches_the_float64_oracle(
    monkeypatch, shape, decay, with_base
):
    """Singular values to 1e-9 relative of float64 LAPACK (second order in the float32
    basis error: 2e-13 on Gaussian, 1.4e-10 on power-law spectra here), top-k subspaces
    within the kept bound of 0.01 degree (measured <= 1.6e-3; stated: 0.05), both sides
    orthonormal, tall and wide, a single matrix and a difference; the path is taken."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")

    m, n = shape
    assert min(m, n) >= rs.RITZ_MIN
    k = 64
    w1 = _weights(m, n, seed=m + n, decay=decay)
    w0 = _weights(m, n, seed=3, decay=decay) if with_base else None
    d = w1.double() - (0.0 if w0 is None else w0.double())
    want_u, want_s, want_vh = torch.linalg.svd(d, full_matrices=False)
    calls = []
    real = rs._ops.gram32
    monkeypatch.setattr(rs._ops, "gram32", lambda *a: calls.append(1) or real(*a))
    u, s, vh = rs.exact_svd(w0, w1, k)
    assert calls == [1]
    assert u.shape == (m, k) and s.shape == (k,) and vh.shape == (k, n)
    assert u.dtype == s.dtype == vh.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), want_s[:k].numpy(), rtol=1e-9)
    eye = np.eye(k)
    np.testing.assert_allclose((u.T @ u).numpy(), eye, atol=1e-12)
    np.testing.assert_allclose((vh @ vh.T).numpy(), eye, atol=1e-12)
    left = np.rad2deg(subspace_angles(u.numpy(), want_u[:, :k].numpy())).max()
    right = np.rad2deg(subspace_angles(vh.T.numpy(), want_vh[:k].T.numpy())).max()
    # within the a priori bound the path keeps (0.01 degree; stated for the angles: 0.05)
    bound = importlib.import_module("paramgeom.linalg.eigen").FLOAT32_BOUND_DEG
    assert left < bound and right < bound
    # U and V pair up, dW v_i = s_i u_i, to the basis' float32 error (the float64 path's
    # 1e-15 is not promised: no figure pairs them).
    assert float((d @ vh.T - u * s).abs().max()) < 1e-5 * float(s[0])


def test_exact_svd_float32_overflow_falls_back_to_float64():
    """Weights near float32's range overflow a float32 Gram while float64 holds it: the
    float64 path answers (same values as the oracle), it is not a non-finite error."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")

    w = _weights(600, 520, seed=5, decay=0.0).float() * 1e20  # squares ~1e38: sums overflow
    assert not torch.isfinite(rs._ops.gram32(None, w, "right")).all()
    _, s, _ = rs.exact_svd(None, w, 16)
    want = torch.linalg.svdvals(w.double())[:16]
    np.testing.assert_allclose(s.numpy(), want.numpy(), rtol=1e-11)


def test_exact_svd_non_finite_weights_still_raise():
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")

    w = _weights(600, 520, seed=5, decay=0.0)
    w[3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        rs.exact_svd(None, w, 16)


def test_eigenvalues_desc_symmetric_reads_one_triangle():
    """``symmetric=True`` (a Gram the kernels mirror) solves the matrix as given: on an
    exactly symmetric one the same values as without it, and as the oracle."""
    g = _gram(300, 310, seed=11)
    want = np.linalg.eigvalsh(g.numpy())[::-1]
    for flag in (False, True):
        got = eigenvalues_desc(g, symmetric=flag)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12 * want[0])
    assert torch.equal(eigenvalues_desc(g.float()), eigenvalues_desc(g.float(), symmetric=True))


@pytest.mark.parametrize("forced", ["top_eigenpairs", "exact_svd"])
def test_float32_window_on_a_steep_spectrum_falls_back_to_float64(monkeypatch, forced):
    """sigma_1 / sigma_k ~ 1e3 puts lambda_k near float32's resolution of lambda_1: the
    float32 window basis is then wrong by more than the 0.01 degree the guard allows (by how
    much depends on the machine's float32 LAPACK rounding: 72 degrees measured at 1024 x 1024
    on an AMD EPYC, 0.13 at this size on an AVX-512 Xeon). Its a priori bound sees it and
    float64 answers: the oracle's subspace within 1e-6 degree."""
    from paramgeom.linalg import eigen

    rs = importlib.import_module("paramgeom.linalg.randomized_svd")
    w = _weights(600, 520, seed=9, decay=1.6)
    k = 64
    want_u, want_s, want_vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert float(want_s[0] / want_s[k - 1]) > 500
    if forced == "top_eigenpairs":
        monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
        q32 = eigen.top_window(w.double().T @ w.double(), k + eigen.FLOAT32_MARGIN)
        vals, v = top_eigenpairs(w.double().T @ w.double(), k)
    else:
        g = w.double().T @ w.double()
        q32 = eigen.top_window(g, k + eigen.FLOAT32_MARGIN)
        _, s, vh = rs.exact_svd(None, w, k)
        v = vh.T
        np.testing.assert_allclose(s.numpy(), want_s[:k].numpy(), rtol=1e-9)
    oracle = want_vh[:k].T.numpy()
    # the float32 window alone misses the top-k subspace (what the guard is for), as its a
    # priori bound says ...
    want_vals = (want_s.double() ** 2)[: k + eigen.FLOAT32_MARGIN]
    assert eigen.float32_bound_deg(want_vals, k) > eigen.FLOAT32_BOUND_DEG
    assert np.rad2deg(subspace_angles(q32.numpy(), oracle)).max() > eigen.FLOAT32_BOUND_DEG
    # ... and the answer does not.
    assert np.rad2deg(subspace_angles(v.numpy(), oracle)).max() < 1e-6


def test_float32_bound_deg():
    from paramgeom.linalg.eigen import float32_bound_deg

    vals = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    assert float32_bound_deg(vals, 2) == pytest.approx(np.rad2deg(2.0**-24 * 4.0 / 1.5))
    assert float32_bound_deg(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 2) == np.inf


# A decaying spectrum (singular values ~ i^-decay) whose gap at k = 64 is too small for the
# first 16-wide margin but reached within half the matrix: one wider float32 window.
DECAYING = (900, 640, 0.9)


def _least_passing_width(lam: torch.Tensor, k: int) -> int | None:
    from paramgeom.linalg import eigen

    for j in range(k + 1, int(lam.shape[0]) + 1):
        if eigen.float32_bound_deg(lam[:j], k) <= eigen.FLOAT32_BOUND_DEG:
            return j
    return None


@pytest.mark.parametrize("decay", [0.85, 0.9, 0.93])
def test_float32_retry_width_predicts_a_window_that_passes(decay):
    """From the first window's values alone, a width at least the least that passes the
    bound, and that passes it (measured: 93 / 126 / 232 where 85 / 106 / 137 are the least),
    within half the matrix."""
    from paramgeom.linalg import eigen

    w = _weights(900, 640, seed=7, decay=decay).double()
    lam = torch.linalg.eigvalsh(w.T @ w).flip(0)
    k = 64
    first = lam[: k + eigen.FLOAT32_MARGIN]
    assert eigen.float32_bound_deg(first, k) > eigen.FLOAT32_BOUND_DEG
    width = eigen.float32_retry_width(first, k, 640)
    assert width is not None and _least_passing_width(lam, k) <= width <= 320
    assert eigen.float32_bound_deg(lam[:width], k) <= eigen.FLOAT32_BOUND_DEG


def test_float32_retry_width_gives_up_where_no_window_can_pass():
    """lambda_k below the gap the bound wants (steep), a spectrum that does not fall inside
    the window, a zero last value, k outside the window, a width past half the matrix."""
    from paramgeom.linalg import eigen

    def desc(x):
        return torch.tensor(x, dtype=torch.float64)

    steep = torch.arange(1, 81, dtype=torch.float64) ** -3.2
    assert eigen.float32_retry_width(steep, 64, 640) is None
    assert eigen.float32_retry_width(desc([1.0, 0.5, 0.5, 0.5]), 2, 100) is None
    assert eigen.float32_retry_width(desc([1.0, 0.5, 0.4, 0.0]), 2, 100) is None
    assert eigen.float32_retry_width(desc([1.0, 0.5]), 2, 100) is None
    decaying = torch.arange(1, 81, dtype=torch.float64) ** -1.8
    wide = eigen.float32_retry_width(decaying, 64, 10_000)
    assert wide is not None and wide > 80
    assert eigen.float32_retry_width(decaying, 64, 2 * wide - 1) is None


def test_exact_svd_retries_a_wider_float32_window_on_a_decaying_spectrum(monkeypatch):
    """The 16-wide margin fails its bound, the predicted wider window passes: no float64
    Gram is formed, and the answer is the float64 oracle's (subspaces within the 0.01 degree
    kept, singular values to 1e-9)."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")
    m, n, decay = DECAYING
    k = 64
    w = _weights(m, n, seed=7, decay=decay)
    widths = window_widths(monkeypatch)
    grams = []
    real_gram = rs._ops.gram
    monkeypatch.setattr(rs._ops, "gram", lambda *a: grams.append(1) or real_gram(*a))
    u, s, vh = rs.exact_svd(None, w, k)
    assert widths[0] == k + 16 and len(widths) == 2 and widths[1] > widths[0]
    assert not grams
    want_u, want_s, want_vh = torch.linalg.svd(w.double(), full_matrices=False)
    np.testing.assert_allclose(s.numpy(), want_s[:k].numpy(), rtol=1e-9)
    right = np.rad2deg(subspace_angles(vh.T.numpy(), want_vh[:k].T.numpy())).max()
    left = np.rad2deg(subspace_angles(u.numpy(), want_u[:, :k].numpy())).max()
    assert max(left, right) < 0.01


def test_top_eigenpairs_retries_a_wider_float32_window(monkeypatch):
    """The float64 Gram's float32 reduction takes the same second window, and matches the
    float64 oracle's top-k eigenpairs."""
    from paramgeom.linalg import eigen

    m, n, decay = DECAYING
    k = 64
    w = _weights(m, n, seed=7, decay=decay).double()
    g = w.T @ w
    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    widths = window_widths(monkeypatch)
    vals, vecs = top_eigenpairs(g, k, symmetric=True)
    assert len(widths) == 2 and widths[0] == k + 16 and widths[1] > widths[0]
    want_vals, want_vecs = torch.linalg.eigh(g)
    np.testing.assert_allclose(vals.numpy(), want_vals.flip(0)[:k].numpy(), rtol=1e-9)
    oracle = want_vecs.flip(1)[:, :k].numpy()
    assert np.rad2deg(subspace_angles(vecs.numpy(), oracle)).max() < 0.01


def test_exact_svd_on_a_steep_spectrum_tries_float32_once(monkeypatch):
    """No width can pass: one float32 window, then float64 without a second float32 attempt
    on the float64 Gram (same spectrum, same bound)."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")
    from paramgeom.linalg import eigen

    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    widths = window_widths(monkeypatch)
    w = _weights(600, 520, seed=9, decay=1.6)
    _, s, _ = rs.exact_svd(None, w, 64)
    assert widths == [64 + 16]
    want = torch.linalg.svdvals(w.double())[:64]
    np.testing.assert_allclose(s.numpy(), want.numpy(), rtol=1e-9)


def test_float64_path_other_side_vectors_are_float64_accurate():
    """The float64 path's other-side vectors ``dW v_i / s_i`` come from float64 products on
    CPU: on a spectrum falling 9500-fold over the top 64 (the kind this path is the
    fallback for) the left subspace is within 1e-5 degree of float64 LAPACK's (fp32
    products: 3.9e-5 measured), as the right one is."""
    rs = importlib.import_module("paramgeom.linalg.randomized_svd")
    w = _weights(600, 520, seed=9, decay=2.2)
    k = 64
    want_u, want_s, want_vh = torch.linalg.svd(w.double(), full_matrices=False)
    assert float(want_s[0] / want_s[k - 1]) > 5000
    u, s, vh = rs.exact_svd(None, w, k)
    left = np.rad2deg(subspace_angles(u.numpy(), want_u[:, :k].numpy())).max()
    right = np.rad2deg(subspace_angles(vh.T.numpy(), want_vh[:k].T.numpy())).max()
    assert max(left, right) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_subset_solvers_leave_the_callers_matrix_alone(monkeypatch, dtype):
    """LAPACK overwrites its input: a Gram passed with ``symmetric=True`` (no symmetric part
    formed, so no copy of it) must come back unchanged from every solver."""
    from paramgeom.linalg import eigen

    g = _gram(300, 310, seed=13).to(dtype)
    before = g.clone()
    eigen.top_window(g, 40, symmetric=True)
    top_eigenpairs(g, 20, symmetric=True)
    eigenvalues_desc(g, symmetric=True)
    monkeypatch.setattr(eigen, "FLOAT32_REDUCTION_MIN", 1)
    top_eigenpairs(g, 20, symmetric=True)
    assert torch.equal(g, before)


@pytest.mark.parametrize("shape", [(300, 257), (257, 600), (1, 5)])
@pytest.mark.parametrize("with_base", [False, True])
def test_gram32_is_the_exactly_symmetric_float32_gram(shape, with_base):
    """``_ops.gram32`` (upper block triangle, mirrored) against the float64 Gram of the
    smaller side: float32 accuracy, and bitwise symmetric."""
    from paramgeom.linalg import _ops

    m, n = shape
    w1 = _weights(m, n, seed=m, decay=0.3)
    w0 = _weights(m, n, seed=n, decay=0.3) if with_base else None
    d = w1.double() - (0.0 if w0 is None else w0.double())
    side = "right" if n <= m else "left"
    want = d.T @ d if side == "right" else d @ d.T
    got = _ops.gram32(w0, w1, side)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, got.T)
    scale = float(want.abs().max())
    assert float((got.double() - want).abs().max()) <= 1e-5 * scale
