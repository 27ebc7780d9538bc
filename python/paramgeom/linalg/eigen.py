"""Eigenvalues of the small symmetric matrices the spectra reduce to, at the cost each figure
needs.

The exact spectral path turns every figure into an eigenproblem of a ``p x p`` Gram matrix
(``p = min(m, n)``): dW's spectrum needs all eigenvalues and no vectors (LAPACK's
tridiagonal reduction and ``sterf``: about ``4/3 p^3`` flops), a top-K subspace needs only
K vectors. torch exposes only the all-vectors solver (``syevd``, about ``9 p^3`` flops with
its back-transformation); LAPACK's subset solver ``syevr`` computes the K wanted pairs by
the MRRR algorithm after the same reduction, and back-transforms K vectors only (``2 p^2
K``). SciPy binds it (``scipy.linalg.eigh(subset_by_index=...)``); on CUDA, where cuSOLVER's
subset solver is not bound by torch, the full solver runs on the device.

Accuracy (float64): eigenvalues to ``eps * ||G||`` absolute; eigenvectors to ``eps * ||G|| /
gap`` (the Davis-Kahan bound of the distance to the next eigenvalue), the same for both
solvers. From ``n >= FLOAT32_REDUCTION_MIN`` the subset solver runs in float32 on a
``K + FLOAT32_MARGIN``-wide window and a float64 Rayleigh-Ritz step on the float64 matrix
finishes it (the reduction's cost falls by a third at n = 2048): eigenvalues then carry an
error of about the square of the vectors' (1e-10 relative), and the top-K subspace one of
about ``eps32 * ||G|| / (lambda_K - lambda_{K+margin+1})`` (measured <= 2e-4 degree on
Gaussian and power-law Grams, against the 0.05-degree accuracy stated for the angles).
That bound, taken with Ritz values (:func:`float32_bound_deg`), decides: a window whose
bound passes ``FLOAT32_BOUND_DEG`` is dropped. Decaying spectra (trained weights) often
reach the gap the bound wants a few hundred eigenvalues past K: one wider window, its width
predicted from the failed one's Ritz values (:func:`float32_retry_width`), is tried. Where
none up to half the matrix is predicted to pass, a few singular values far above the rest
(spikes) may be what sets ``eps32 * lambda_1``: then the same width is tried once more on
the matrix with the first window's top Ritz vectors projected out (as few as
:func:`deflation_count` finds enough), and those vectors are joined to the new window. Where
neither is predicted to pass (steep spectra, where float32 cannot resolve ``lambda_K`` next
to ``lambda_1``), or the one tried fails, float64 answers.
:func:`paramgeom.linalg.randomized_svd.exact_svd` uses the same window and test on a float32
Gram from ``n >= 512``.

All eigenvalues without vectors go through LAPACK's ``syevr`` too on CPU (float64) up to
``n = SYEVR_VALUES_MAX``, torch's ``eigvalsh`` above (faster there, see the constant); the
callers that hold an exactly symmetric Gram say so (``symmetric=True``) and skip the pass
that forms the symmetric part.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from paramgeom.linalg import _lapack
from paramgeom.linalg.cholesky_qr import orthonormalise_near

__all__ = [
    "deflated",
    "deflation_count",
    "eigenvalues_desc",
    "float32_bound_deg",
    "float32_retry_width",
    "passing_window",
    "ritz",
    "top_eigenpairs",
    "top_window",
]

FLOAT32_REDUCTION_MIN = 2048
SYEVR_VALUES_MAX = 1024
"""Largest float64 matrix whose eigenvalues (no vectors) SciPy's ``syevr`` computes on CPU;
above it torch's ``eigvalsh`` does. The tridiagonal reduction is half matrix-vector
products, bound by memory once the matrix leaves the cache: one thread of the 2-core
AVX-512 VM, SciPy's OpenBLAS against torch's MKL, ``syevr`` / ``eigvalsh`` = 0.83 at n =
768 and 1024, 1.60 at 1280, 1.81 at 1536, 2.01 at 2048 and 2560, 2.10 at 4096."""
FLOAT32_MARGIN = 16
# Largest a priori bound on a float32 basis' angle error that a float32-then-Ritz solve keeps
# (degrees; a fifth of the 0.05 stated for the angles): beyond it, float64 answers.
FLOAT32_BOUND_DEG = 0.01
FLOAT32_WIDTH_SAFETY = 1.2
"""Factor on the gap that :func:`float32_retry_width` asks the wider window for, against the
curvature its local power law does not see (measured: widths 374 and 1124 predicted where
359 and 1042 were the least that passed, on power-law Grams of 2560 and 6144)."""
DEFLATE_MAX = 32
"""Most top Ritz vectors (spikes) :func:`deflation_count` projects out before a second float32
window: each costs ``4 m n`` flops in float64 over the matrix, a small part of the float32
Gram the deflated window needs (``m n^2``) up to this count."""
FLOAT32_WIDTH_MAX = 0.5
"""Widest float32 window, as a fraction of the matrix. A wider window costs more to solve and
to finish (its Ritz products grow with it), the float64 solve does not: measured, one
thread, power-law spectra, the wider window against float64 after the first window, 0.88 vs
0.90 s at 1664 columns (window 29% of them), 2.54 vs 3.09 s at 2560 (15%), 6.78 vs 9.63 s
at 4096. Half the matrix is a cap past any gain, not a measured crossover."""


def _symmetric(g: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """The symmetric part of the square ``g``; ``exact``: ``g`` is known to be exactly
    symmetric (a Gram the kernels mirror), and forming it again would only cost a pass."""
    if g.dim() != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(g.shape)}")
    return g if exact else 0.5 * (g + g.T)


def _scipy_eigh():
    try:
        from scipy.linalg import eigh
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None
    return eigh


def eigenvalues_desc(g: torch.Tensor, *, symmetric: bool = False) -> torch.Tensor:
    """Every eigenvalue of the symmetric ``g`` (its symmetric part), descending, in ``g``'s
    dtype: no vectors are formed. ``symmetric=True`` says ``g`` is exactly symmetric (then
    one triangle is read as it is).

    On CPU in float64 up to :data:`SYEVR_VALUES_MAX`, LAPACK's ``syevr`` without vectors
    (SciPy's) runs: the same reduction and ``sterf`` as torch's ``eigvalsh``, measured 16%
    faster at n = 1024 on the 2-core VM (94 vs 112 ms). Above it, torch's ``eigvalsh`` (MKL's
    ``syevd`` on x86 builds) runs; both are backward stable, to ``eps * ||G||``."""
    given, g = g, _symmetric(g, symmetric)
    n = int(g.shape[0])
    use_syevr = g.device.type == "cpu" and g.dtype == torch.float64 and n <= SYEVR_VALUES_MAX
    eigh = _scipy_eigh() if use_syevr else None
    if eigh is None or n == 0:
        return torch.linalg.eigvalsh(g).flip(0)
    got = _lapack.syevr(_own_array(g, given), 0, n - 1, vectors=False)
    if got is None:
        vals = eigh(g.detach().numpy(), eigvals_only=True, driver="evr", check_finite=False)
    else:
        vals = got[0]
    return torch.from_numpy(vals[::-1].copy())


def float32_bound_deg(ritz_desc: torch.Tensor, k: int, deflated: int = 0) -> float:
    """Davis-Kahan bound (degrees) of a float32 window basis' error in the top-k subspace:
    a perturbation of ``eps32 * lambda_1`` against the gap from the k-th Ritz value to the
    window's last (the estimate of the first eigenvalue outside it). ``ritz_desc``: the
    window's Ritz values, descending. Measured errors sit 30 to 300 times below it; where it
    is large (steep spectra: ``lambda_1 / lambda_k`` towards ``1 / eps32``) the float32
    basis can be wrong by tens of degrees (measured: 72 degrees at ``s_1 / s_k = 1464``).

    ``deflated = s``: the window of a Gram whose matrix had the top ``s`` Ritz vectors of an
    earlier window projected out (:func:`passing_window`). What is left rounds at ``eps32 *
    lambda_{s+1}``; the ``s`` vectors' own error, ``delta = eps32 * lambda_1 / (lambda_s -
    lambda_last)`` (radians), leaves ``delta * lambda_{s+1}`` of the part kept and ``delta^2
    * lambda_1`` of the part removed: the perturbation is their sum."""
    gap = float(ritz_desc[k - 1] - ritz_desc[-1])
    if not gap > 0.0:
        return math.inf
    eps, top = 2.0**-24, float(ritz_desc[0])
    if deflated == 0:
        return math.degrees(eps * top / gap)
    sep = float(ritz_desc[deflated - 1] - ritz_desc[-1])
    if not sep > 0.0:
        return math.inf
    delta, kept = eps * top / sep, float(ritz_desc[deflated])
    return math.degrees((eps * kept + delta * kept + delta**2 * top) / gap)


def deflation_count(ritz_desc: torch.Tensor, k: int) -> int | None:
    """The fewest top Ritz vectors (at most :data:`DEFLATE_MAX`, fewer than ``k``) whose
    projection out of the matrix would let a window of the same width pass
    :data:`FLOAT32_BOUND_DEG` (its bound widened by :data:`FLOAT32_WIDTH_SAFETY`), from the
    Ritz values ``ritz_desc`` (descending) of a window that did not; None when none does.

    Trained weights often have a few singular values far above the rest (spikes): they set
    the float32 rounding, ``eps32 * lambda_1``, though the top-k subspace's gap lies among
    the rest. Their vectors, well separated, are accurate in the failed window already."""
    for s in range(1, min(DEFLATE_MAX, k - 1) + 1):
        bound = float32_bound_deg(ritz_desc, k, deflated=s)
        if FLOAT32_WIDTH_SAFETY * bound <= FLOAT32_BOUND_DEG:
            return s
    return None


def float32_retry_width(ritz_desc: torch.Tensor, k: int, n: int) -> int | None:
    """Width of a float32 window predicted to pass :data:`FLOAT32_BOUND_DEG`, from the Ritz
    values ``ritz_desc`` (descending) of a narrower window that did not; None when none up to
    ``FLOAT32_WIDTH_MAX * n`` is (then float64 answers).

    The bound wants ``lambda_k - lambda_last >= eps32 * lambda_1 / FLOAT32_BOUND_DEG``
    (radians). A decaying spectrum (trained weights: singular values falling as a power of
    the index) often has that gap a few hundred eigenvalues past ``k`` where a 16-wide
    margin does not: the window's last two points ``(k, lambda_k)`` and ``(w,
    lambda_w)`` fix a local power law ``lambda_i ~ i^-a``, which says where the gap is
    reached, widened by :data:`FLOAT32_WIDTH_SAFETY`. Where the wanted gap is more than
    ``lambda_k`` itself (``lambda_k / lambda_1`` near ``eps32``), no width helps."""
    w = int(ritz_desc.shape[0])
    if not 1 <= k < w:
        return None
    l1, lk, lw = (float(ritz_desc[i]) for i in (0, k - 1, w - 1))
    target = lk - FLOAT32_WIDTH_SAFETY * 2.0**-24 * l1 / math.radians(FLOAT32_BOUND_DEG)
    if not (target > 0.0 and lw > 0.0 and lk > lw):
        return None
    decay = math.log(lk / lw) / math.log(w / k)
    width = math.ceil(k * (lk / target) ** (1.0 / decay)) + 1
    return width if w < width <= FLOAT32_WIDTH_MAX * n else None


def passing_window(
    attempt: Callable[[int, torch.Tensor | None], tuple], k: int, n: int, width: int
) -> tuple | None:
    """The float32-window rule in one place. ``attempt(width, spikes)`` solves a window of
    that width and returns its Ritz values (descending) and Ritz vectors (float64, the same
    order) first; with ``spikes`` (orthonormal float64 columns) the window is that of the
    matrix with their span projected out, joined to them (``width - s`` vectors of its own).

    The first window (``spikes=None``) is kept when it passes ``FLOAT32_BOUND_DEG``; else
    one more is tried and kept when it passes: as wide as :func:`float32_retry_width`
    predicts from the first's Ritz values (decaying spectra; ``n``: the matrix's side), or,
    where no width is predicted, the same width with the first's top Ritz vectors projected
    out, as many as :func:`deflation_count` says (spikes). None when neither is tried or the
    one tried fails: then float64 answers."""
    got = attempt(width, None)
    if float32_bound_deg(got[0], k) <= FLOAT32_BOUND_DEG:
        return got
    wider = float32_retry_width(got[0], k, n)
    if wider is not None:
        got = attempt(wider, None)
        return got if float32_bound_deg(got[0], k) <= FLOAT32_BOUND_DEG else None
    spikes = deflation_count(got[0], k)
    if spikes is None:
        return None
    got = attempt(width, got[1][:, :spikes].contiguous())
    return got if float32_bound_deg(got[0], k, deflated=spikes) <= FLOAT32_BOUND_DEG else None


def deflated(g: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``(I - B B^T) g (I - B B^T)`` for the symmetric float64 ``g`` and orthonormal ``B``:
    ``g`` with ``B``'s span projected out (its eigenvalues there become zero, the rest stay)."""
    g = g - basis @ (basis.T @ g)
    return g - (g @ basis) @ basis.T


def top_window(
    g: torch.Tensor, width: int, *, symmetric: bool = False, overwrite: bool = False
) -> torch.Tensor:
    """An orthonormal float64 basis ``(n, width)`` of the eigenvectors of the ``width``
    largest eigenvalues of the symmetric ``g``, from a float32 reduction of its symmetric
    part (LAPACK's ``syevr`` on CPU, ``eigh`` elsewhere), re-orthonormalised in float64.
    ``symmetric=True`` says ``g`` is exactly symmetric; ``overwrite=True`` that the caller
    no longer needs it (a float32 ``g`` is then solved in its own memory, not a copy).

    It is the first half of a float32-then-Rayleigh-Ritz solve: the basis carries float32
    errors of about ``eps32 * ||G|| / (lambda_i - lambda_{width+1})`` per direction, which a
    Rayleigh-Ritz step in float64 on a window wider than the wanted ``k`` keeps away from the
    top ``k`` (the pairs near the window's edge absorb them)."""
    n = int(g.shape[-1])
    if not 1 <= width <= n:
        raise ValueError(f"width must be in [1, {n}], got {width}")
    a = _symmetric(g.detach().to(torch.float32), symmetric)
    eigh = _scipy_eigh() if a.device.type == "cpu" else None
    if eigh is None:
        vecs = torch.linalg.eigh(a).eigenvectors[:, n - width :]
    else:
        vecs = _syevr_top(a, width, None if overwrite else g)[1]
    return orthonormalise_near(vecs.to(torch.float64))


def _syevr_top(a: torch.Tensor, width: int, given: torch.Tensor | None):
    """LAPACK's ``syevr`` for the ``width`` largest pairs of the symmetric CPU matrix ``a``,
    ascending as LAPACK returns them, as tensors: through :mod:`._lapack` without the GIL
    (SciPy's ``eigh`` where that is not available). A matrix of our own (not the caller's
    ``given``; None: nothing of the caller's to keep) is solved in place (row-major memory
    read as Fortran's is the transpose, the same symmetric matrix); the caller's is copied
    first."""
    n = int(a.shape[0])
    got = _lapack.syevr(_own_array(a, given), n - width, n - 1)
    if got is None:
        x = a.detach().contiguous()
        theirs = given is not None and x.data_ptr() == given.data_ptr()
        arr = x.numpy() if theirs else x.numpy().T
        got = _scipy_eigh()(
            arr, subset_by_index=[n - width, n - 1], driver="evr", check_finite=False,
            overwrite_a=True,
        )  # fmt: skip
    return torch.from_numpy(got[0]), torch.from_numpy(got[1])


def _own_array(a: torch.Tensor, given: torch.Tensor | None):
    """``a`` as a NumPy array LAPACK may overwrite: its own memory when it is a matrix of
    ours, a copy when it shares memory with the caller's ``given`` (None: nothing to keep)."""
    x = a.detach().contiguous()
    shared = given is not None and (
        x.untyped_storage().data_ptr() == given.untyped_storage().data_ptr()
    )
    return x.numpy().copy() if shared else x.numpy()


def top_eigenpairs(
    g: torch.Tensor, k: int, *, symmetric: bool = False, float32: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenvalues (descending, ``(k,)``) of the symmetric ``g`` (``n x n``,
    its symmetric part) and their eigenvectors (``(n, k)``, orthonormal columns), in ``g``'s
    dtype and on its device. ``symmetric=True`` says ``g`` is exactly symmetric.

    On CPU LAPACK's subset solver (``syevr`` through SciPy) computes only those ``k``
    pairs; elsewhere (or without SciPy) the full solver runs and the top ``k`` are kept. A
    float64 ``g`` from ``FLOAT32_REDUCTION_MIN`` is first tried as a float32 window and a
    Ritz step (a second, wider window where :func:`float32_retry_width` predicts one
    passes); ``float32=False`` skips that (a caller whose float32 attempt on the same
    spectrum already failed).
    """
    n = int(g.shape[-1])
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    given, g = g, _symmetric(g, symmetric)
    if g.device.type == "cpu" and k < n and _scipy_eigh() is not None:
        if float32 and g.dtype == torch.float64 and n >= FLOAT32_REDUCTION_MIN:

            def attempt(w: int, spikes: torch.Tensor | None):
                if spikes is None:
                    return ritz(g, top_window(g, w, symmetric=True))
                rest = top_window(deflated(g, spikes), w - spikes.shape[1])
                return ritz(g, orthonormalise_near(torch.cat([spikes, rest], 1)))

            got = passing_window(attempt, k, n, min(n, k + FLOAT32_MARGIN))
            if got is not None:
                vals, vecs = got
                return vals[:k].contiguous(), vecs[:, :k].contiguous()
        # NumPy needs a dtype it has; bf16/fp16 Grams do not occur (the kernels return
        # float32 or float64).
        vals, vecs = _syevr_top(g, k, given)
        return vals.flip(0), vecs.flip(1).contiguous()
    vals, vecs = torch.linalg.eigh(g)
    return vals.flip(0)[:k].contiguous(), vecs.flip(1)[:, :k].contiguous()


def ritz(g: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rayleigh-Ritz of the float64 symmetric ``g`` on the orthonormal ``q`` (``n x l``): the
    ``l`` Ritz values (descending) and vectors ``(n, l)``. The window's own errors (the pairs
    near the k-th, closest to each other) are solved exactly in float64; what stays is the
    error of ``q`` from eigenvalues beyond it."""
    h = q.T @ (g @ q)
    vals, y = torch.linalg.eigh(0.5 * (h + h.T))
    return vals.flip(0), q @ y.flip(1)
