"""The GIL-free ``syevr`` binding (paramgeom.linalg._lapack) against SciPy's ``eigh`` and a
float64 oracle; the lock is released during the solve; bad arguments are refused."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.linalg as sl

from paramgeom.linalg import _lapack

pytestmark = pytest.mark.skipif(
    not (_lapack.available(np.float32) and _lapack.available(np.float64)),
    reason="this SciPy exports no LAPACK function pointers",
)


def _gram(n: int, m: int, dtype, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((m, n))
    return (x.T @ x).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 257])
@pytest.mark.parametrize("order", ["C", "F"])
def test_subset_matches_scipy_and_oracle(dtype, n, order):
    g = _gram(n, n + 5, dtype)
    first = max(0, n - max(1, n // 3))
    w, z = _lapack.syevr(np.array(g, order=order), first, n - 1)
    ws, zs = sl.eigh(g, subset_by_index=[first, n - 1], driver="evr")
    np.testing.assert_array_equal(w, ws)  # same routine, same arguments
    # Vectors up to sign, against the float64 oracle's.
    wo, zo = np.linalg.eigh(g.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(w, wo[first:], rtol=tol, atol=tol * float(wo[-1]))
    assert z.shape == (n, n - first)
    np.testing.assert_allclose(np.abs(np.sum(z * zs, axis=0)), 1.0, atol=1e-5)
    np.testing.assert_allclose(z.T @ z, np.eye(n - first), atol=tol)
    resid = g.astype(np.float64) @ z - z * w
    assert np.abs(resid).max() <= 50 * tol * float(wo[-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_only(dtype):
    g = _gram(100, 120, dtype, seed=1)
    w, z = _lapack.syevr(g.copy(), 0, 99, vectors=False)
    assert z is None
    np.testing.assert_array_equal(w, sl.eigh(g, eigvals_only=True, driver="evr"))


def test_refuses_bad_arguments():
    g = _gram(8, 10, np.float64)
    with pytest.raises(ValueError, match="first <= last"):
        _lapack.syevr(g.copy(), 5, 2)
    with pytest.raises(ValueError, match="first <= last"):
        _lapack.syevr(g.copy(), 0, 8)
    ro = g.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        _lapack.syevr(ro, 0, 7)
    # Not solvable this way (the caller falls back): strided, non-square, other dtypes.
    assert _lapack.syevr(np.ones((8, 16))[:, ::2], 0, 1) is None
    assert _lapack.syevr(np.ones((3, 4)), 0, 1) is None
    assert _lapack.syevr(np.ones((4, 4), np.int64), 0, 1) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_refused(bad):
    # LAPACK itself returns finite-looking eigenvalues for a matrix holding NaN.
    g = _gram(16, 20, np.float64)
    g[3, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        _lapack.syevr(g, 0, 15)
    big = np.eye(8, dtype=np.float32) * np.float32(1e38)  # sums to Inf, all finite
    w, _ = _lapack.syevr(big, 7, 7)
    np.testing.assert_allclose(w, [1e38], rtol=1e-6)


def test_solves_run_side_by_side():
    # The lock is released: while one thread solves, the other runs Python code.
    g = _gram(700, 800, np.float64, seed=2)
    ticks, stop = [0], threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        time.sleep(0.01)
        before = ticks[0]
        _lapack.syevr(g.copy(), 0, 699)
        during = ticks[0] - before
    finally:
        stop.set()
        t.join()
    # Held for the whole solve (SciPy's eigh), the lock would stop the counter until the
    # call returns: a few ticks at most. Released, it counts for the whole solve.
    assert during > 1000
