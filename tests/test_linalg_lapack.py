"""The GIL-free ``syevr`` binding (paramgeom.linalg._lapack) against SciPy's ``eigh`` and a
float64 oracle; the lock is released during the solve; bad arguments are refused."""

from __future__ import annotations

import ctypes
import importlib
import threading
import time

import numpy as np
import pytest
import scipy.linalg as sl

from paramgeom.linalg import _lapack
from paramgeom.linalg._scipy_capi import _set_threads, one_blas_thread

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
    # Solved on one OpenBLAS thread (another count sums in another order)
    with one_blas_thread():
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


def _openblas_threads():
    """SciPy's OpenBLAS's thread count for calls from this thread, or None."""
    lib = ctypes.CDLL(importlib.import_module("scipy.linalg.cython_lapack").__file__)
    fn = getattr(lib, "scipy_openblas_get_num_threads", None) or getattr(
        lib, "openblas_get_num_threads", None
    )
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


@pytest.mark.skipif(_set_threads() is None, reason="no OpenBLAS thread count to set")
def test_one_blas_thread_pins_until_the_last_leaves():
    before = _openblas_threads()
    if before is None:
        pytest.skip("no OpenBLAS thread count to read")
    seen = {}
    inside, left = threading.Event(), threading.Event()

    def other():  # a second caller of ours, entering and leaving while the first is inside
        with one_blas_thread():
            seen["other inside"] = _openblas_threads()
            inside.set()
        left.set()

    with one_blas_thread():
        seen["inside"] = _openblas_threads()
        t = threading.Thread(target=other)
        t.start()
        assert inside.wait(10) and left.wait(10)
        seen["after the other left"] = _openblas_threads()
    t.join(10)
    assert seen == {"inside": 1, "other inside": 1, "after the other left": 1}
    assert _openblas_threads() == before


def test_solves_do_not_depend_on_openblas_threads():
    """A solve's bits are one OpenBLAS thread's whatever OPENBLAS_NUM_THREADS says (before,
    a monitor's figures changed in the last bits with it; the command line sets 1)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np; from paramgeom.linalg import _lapack;"
        "x = np.random.default_rng(0).standard_normal((300, 200)); g = x.T @ x;"
        "w, z = _lapack.syevr(g.copy(), 150, 199); print(w.tobytes().hex(), z.tobytes().hex())"
    )
    outs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        outs.append(got.stdout)
    assert outs[0] == outs[1]
