"""``randomized_svd``: truncated SVD of the implicit difference ``dW = w1 - w0``.

DESIGN.md "Kernels (the contract)" item 4: the randomized range finder of Halko, Martinsson
and Tropp ("Finding structure with randomness", SIAM Review 53(2), 2011; Alg. 4.4 with the
small SVD of Sec. 5.1) on the implicit difference, and an exact path through the Gram matrix
when ``min(m, n)`` is small. ``dW`` is never materialised whole: every product goes through
``diff_matmul`` and every Gram through ``gram_update``, except on CPU the exact path's
float32 Grams and float64 products (the Rayleigh-Ritz step's, and the other side's vectors
``dW v_i / s_i``), which form ``dW`` one row block at a time (:mod:`paramgeom.linalg._ops`).

Range finder, with ``l = k + p`` columns: the block Krylov space of Musco and Musco
(:mod:`paramgeom.linalg.krylov`), which keeps every block of the power iteration instead of
only the last::

    Omega ~ N(0, 1)^{n x l}          (seeded torch.Generator, or the caller's ``init``)
    K = span{Omega, (dW^T dW) Omega, ..., (dW^T dW)^q Omega}   (block Lanczos, reorthogonalised)
    Rayleigh-Ritz on K: top-k singular triplets of the small projected matrix (float64)

``q`` fixed (``power_iters``): ``2 q + 2`` passes over the weights, as many as Alg. 4.4 with
``q`` power iterations, on a space that contains its. ``power_iters=None`` (the default):
blocks are added until every top-k Ritz triplet has a relative residual
``||dW^T u_i - s_i v_i|| / s_1 <= 1e-6``, which bounds the error whatever the gap at ``k``.
A basis that would pass half of ``min(m, n)`` hands over to the exact Gram path below.
"""

from __future__ import annotations

import math

import torch

from paramgeom.linalg import _ops
from paramgeom.linalg.cholesky_qr import orthonormalise_near
from paramgeom.linalg.eigen import (
    FLOAT32_MARGIN,
    eigenvalues_desc,
    passing_window,
    top_eigenpairs,
    top_window,
)

__all__ = ["randomized_svd"]

# Most block Krylov steps of the adaptive default (power_iters=None).
KRYLOV_MAX_STEPS = 30


# ---------------------------------------------------------------------------------------
# helpers shared with subspaces.py and sketch.py


def check_matrix(w: torch.Tensor, name: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(w.shape)}")
    if not (w.is_floating_point()):
        raise TypeError(f"{name} must be a floating-point tensor, got {w.dtype}")


def check_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[int, int]:
    """Validate a weight pair; return ``(m, n)``."""
    check_matrix(w0, "w0")
    check_matrix(w1, "w1")
    if w0.shape != w1.shape:
        raise ValueError(
            f"shape mismatch: w0 has shape {tuple(w0.shape)}, w1 has shape {tuple(w1.shape)}"
        )
    if w0.device != w1.device:
        raise ValueError(f"device mismatch: w0 is on {w0.device}, w1 is on {w1.device}")
    return int(w1.shape[0]), int(w1.shape[1])


def check_k(k: int, m: int, n: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > min(m, n):
        raise ValueError(f"{name} = {k} exceeds min(m, n) = {min(m, n)} for a {m} x {n} matrix")
    return k


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator (test matrices are drawn on CPU, so they do not depend on the device)."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def gaussian(rows: int, cols: int, gen: torch.Generator, device) -> torch.Tensor:
    """A float64 standard Gaussian matrix drawn on CPU from ``gen``, moved to ``device``."""
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64).to(device)


def orth(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of ``y`` (Householder QR, reduced)."""
    return torch.linalg.qr(y, mode="reduced").Q


def normalise_columns(
    c: torch.Tensor, s: torch.Tensor, gen: torch.Generator | None = None
) -> torch.Tensor:
    """``c[:, i] / s[i]`` made exactly orthonormal (:func:`orthonormalise_near`, signs kept).

    Columns with ``s[i]`` at or below ``1e-13 * s[0]`` (a rank-deficient or zero difference)
    carry no direction; they are replaced by an orthonormal completion drawn from ``gen``.
    """
    x = c.clone()
    smax = float(s[0]) if s.numel() else 0.0
    good = s > 1e-13 * smax if smax > 0 else torch.zeros_like(s, dtype=torch.bool)
    x[:, good] = x[:, good] / s[good]
    nbad = int((~good).sum())
    if nbad:
        gen = gen if gen is not None else generator(0)
        x[:, ~good] = gaussian(x.shape[0], nbad, gen, x.device)
    return orthonormalise_near(x)


# Smallest min(m, n) of the float32-then-Rayleigh-Ritz exact path (CPU): below it the
# float64 solve is as fast (measured on the 2-core VM: 256 x 256 16 vs 15 ms, 512 x 512 73
# vs 43 ms, 1024 x 1024 261 vs 198 ms, 2752 x 1024 373 vs 320 ms, K = p / 8).
RITZ_MIN = 512


def sums_finite(x: torch.Tensor) -> bool:
    """Whether the sum of ``x`` is finite: then every entry is (a third of the time of
    ``isfinite().all()``); a finite matrix whose sum overflows (float32 Grams near float32's
    range) answers False as well."""
    return math.isfinite(float(x.sum()))


def check_finite(x: torch.Tensor, what: str) -> None:
    # The sum first: finite for every finite matrix the spectra see (Grams of bf16, fp16 or
    # fp32 weights stay far below float64's range).
    if sums_finite(x) or bool(torch.isfinite(x).all()):
        return
    raise ValueError(f"non-finite values (NaN/Inf) in {what}; spectra are undefined")


def exact_svd(w0: torch.Tensor | None, w1: torch.Tensor, k: int, seed: int | None = 0):
    """Top-k SVD of ``w1 - w0`` from the Gram of its smaller side.

    ``G = dW^T dW`` (or ``dW dW^T``) = ``V S^2 V^T``; the other side's vectors are
    ``dW v_i / s_i``, orthonormalised. Two ways, one accuracy class:

    - float64 (GPU, small matrices): the float64 Gram and LAPACK's subset solver for the k
      wanted pairs; the other side from one fused product.
    - float32 then Rayleigh-Ritz (CPU, ``min(m, n) >= RITZ_MIN``): a float32 Gram and a
      float32 subset solve for ``k + FLOAT32_MARGIN`` pairs give a basis ``Q``; then
      ``Z = dW Q`` with every product in float64 and the eigenpairs of ``Z^T Z`` give the
      singular values, ``V = Q y`` and ``U = Z y / s``. Singular values are as accurate as
      float64's to second order in the basis error (measured <= 3e-13 relative on Gaussian
      matrices up to 2048 wide, float64 path 1e-15); the top-k subspaces are within about
      ``eps32 ||G|| / (s_k^2 - s_{k+17}^2)`` (measured <= 1.3e-4 degree, float64 path
      1e-11), far inside the 0.05 degree stated for the angles. It is kept only while its
      a priori bound (:func:`~paramgeom.linalg.eigen.float32_bound_deg`) is at most
      ``FLOAT32_BOUND_DEG``. Where it is not, one wider window is tried, as wide as the
      Ritz values predict the bound needs
      (:func:`~paramgeom.linalg.eigen.float32_retry_width`: decaying spectra), or where
      none is predicted, one of ``dW`` with the first window's top Ritz vectors projected out
      (spikes: a few singular values far above the rest set the float32 rounding; measured
      on a 4096-wide bf16 Gaussian bulk with 8 spikes of 30 to 1000 times its edge, one
      thread: 8.4-8.6 s against 12.4-13.0 s for float64, within 3.1e-4 degree of it);
      steeper spectra, or a second window that fails too, take the float64 way.
    """
    m, n = w1.shape
    side = "right" if n <= m else "left"
    p, width = min(m, n), min(min(m, n), k + FLOAT32_MARGIN)
    if w1.device.type == "cpu" and p >= RITZ_MIN and width < p:
        grams = [_ops.gram32(w0, w1, side)]
        # A float32 Gram can overflow where the weights and float64 do not: then float64
        # (which also raises for NaN/Inf weights).
        if sums_finite(grams[0]):
            got = _float32_window_ritz(w0, w1, grams, k, width, side)
            grams.clear()  # not read again: not held beside the float64 Gram below
            if got is None:  # the bound failed: skip float32 on the float64 Gram too
                return _exact_svd_float64(w0, w1, k, side, seed, float32=False)
            vals, vecs, zy = got
            s = vals[:k].clamp_min(0.0).sqrt()
            vecs = vecs[:, :k].contiguous()
            other = normalise_columns(zy[:, :k], s, generator(seed))
            if side == "right":
                return other, s.contiguous(), vecs.T.contiguous()
            return vecs, s.contiguous(), other.T.contiguous()
        grams.clear()  # overflowed: float64 answers (or raises), without it
    return _exact_svd_float64(w0, w1, k, side, seed)


def _float32_window_ritz(w0, w1, grams: list[torch.Tensor], k: int, width: int, side: str):
    """``(vals, vecs, zy)``: for the first float32 window ``q`` of ``grams[0]`` (the float32
    Gram, held in a list so that it can be let go) that passes its
    bound (:func:`~paramgeom.linalg.eigen.passing_window`: ``width``, then at most one
    wider or one with the spikes projected out), the Ritz pairs ``(vals, y)`` of ``z^T z``
    with ``z = dW q`` (or ``dW^T q``) in float64, descending: ``vals``, the Ritz vectors ``q
    y`` and ``z y``; None when none passes. A window with spikes is that of a second float32
    Gram, of ``dW`` with their span projected out (:func:`~paramgeom.linalg._ops.gram32`)."""

    n = int(grams[0].shape[0])

    def attempt(w: int, spikes: torch.Tensor | None):
        if spikes is None:
            q = top_window(grams[0], w, symmetric=True)
        else:
            # The last window: neither the first Gram nor the second is read again, so the
            # second is solved in its own memory with the first let go (one n x n float32
            # matrix held instead of three: 0.6 GB against 1.8 GB at 12288 columns).
            grams.clear()
            rest = _ops.gram32(w0, w1, side, deflate=spikes)
            rest = top_window(rest, w - spikes.shape[1], symmetric=True, overwrite=True)
            q = orthonormalise_near(torch.cat([spikes, rest], 1))
        z = _ops.exact_matmul(w0, w1, q, transpose=(side == "left"))
        vals, y = torch.linalg.eigh(z.T @ z)
        y = y.flip(1)
        return vals.flip(0), q @ y, z @ y

    return passing_window(attempt, k, n, width)


def _exact_svd_float64(w0, w1, k: int, side: str, seed: int | None, float32: bool = True):
    g = _ops.gram(w0, w1, side)
    check_finite(g, "the Gram matrix of w1 - w0")
    # only the k wanted pairs (LAPACK's subset solver); the kernel's Gram is exactly symmetric.
    # float32=False: this spectrum's float32 windows already failed their bound, skip them.
    evals, vecs = top_eigenpairs(g, k, symmetric=True, float32=float32)
    s = evals.clamp_min(0.0).sqrt()
    # The other side's vectors, dW v_i / s_i: float64 products on CPU. The kernel's fp32
    # products (DESIGN.md contract 3, kept on CUDA) err by up to eps32 * s_1 / s_i, which
    # grows on the steep and spiked spectra this path is the fallback for: measured 2.4e-3
    # degree with spikes 1000x the bulk (4096 wide), 3.9e-5 at s_1 / s_k = 9500 (now 1.9e-6).
    product = _ops.exact_matmul if w1.device.type == "cpu" else _ops.diff_matmul
    other = product(w0, w1, vecs, transpose=(side == "left"))
    other = normalise_columns(other, s, generator(seed))
    if side == "right":
        return other, s, vecs.T.contiguous()
    return vecs, s, other.T.contiguous()


def diff_svdvals(w0: torch.Tensor | None, w1: torch.Tensor) -> torch.Tensor:
    """All ``min(m, n)`` singular values of ``dW = w1 - w0`` (``w0=None``: of ``w1``),
    float64, descending: the exact path of :func:`randomized_svd` without the vectors.

    DESIGN.md "Metrics", Update rank (stable and effective rank need the spectrum only).
    Memory: the ``p x p`` float64 Gram of the smaller side (``gram_update``, streamed over
    row blocks) and its eigenvalues, nothing of size ``m x n``. Accuracy as
    :func:`randomized_svd`'s exact path: ``s_i`` to about ``eps (s_1 / s_i)^2`` relative.
    """
    if w0 is not None:
        check_pair(w0, w1)
    else:
        check_matrix(w1, "w1")
    m, n = w1.shape
    g = _ops.gram(w0, w1, "right" if n <= m else "left")
    check_finite(g, "the Gram matrix of w1 - w0")
    return eigenvalues_desc(g, symmetric=True).clamp_min(0.0).sqrt()


# ---------------------------------------------------------------------------------------


def randomized_svd(
    w0: torch.Tensor,
    w1: torch.Tensor,
    k: int,
    oversample: int = 10,
    power_iters: int | None = None,
    seed: int | None = None,
    init: torch.Tensor | None = None,
    exact_threshold: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` singular triplets of the implicit difference ``dW = w1 - w0``.

    DESIGN.md "Kernels (the contract)" item 4 (Halko-Martinsson-Tropp range finder on the
    implicit difference; exact path through the Gram when ``min(m, n)`` is small); the
    update-rank and trajectory metrics of arXiv 2606.07082 (stable rank, Sim_K) read these
    singular values and vectors.

    Parameters
    ----------
    w0, w1 : torch.Tensor
        2-D, same shape ``(m, n)``, same device; bf16, fp16 or fp32 (read by the kernels,
        difference formed in fp32), or float64 (exact float64 products), any strides.
    k : int
        Number of triplets, ``1 <= k <= min(m, n)``.
    oversample : int
        Extra test vectors ``p`` (``l = min(k + p, min(m, n))`` columns in all).
    power_iters : int or None
        None (default; before 2026-12 the default was 2): block Krylov steps until the
        relative Ritz residuals of the top k are at most ``1e-6`` (at most
        ``KRYLOV_MAX_STEPS`` steps of two passes each); the singular values are then accurate
        to about ``1e-12 / gap`` relative (measured 1e-8, the fp32 products' floor, on
        gapless Gaussian spectra) and the subspaces to ``sin theta <= 1e-6 s_1 / (s_k -
        s_{k+1})``. An int ``q``: a fixed Krylov depth of ``q + 1`` blocks (``2 q + 2``
        passes, the cost of ``q`` power iterations) with the one-sided extraction of Musco
        and Musco; its error bound is at least that of ``q`` power iterations (HMT Thm 10.8:
        roughly ``sigma_{k+1} * C^{1/(2q+1)}``) and converges like ``exp(-2 q sqrt(gap))``
        on a relative gap instead of ``exp(-2 q gap)``.
    seed : int or None
        Seed of the CPU ``torch.Generator`` that draws Omega (None: nondeterministic).
    init : torch.Tensor, optional
        An ``(n, l)`` start basis with ``k <= l <= min(m, n)`` replacing Omega: the Krylov
        space seeded with, e.g., an earlier step's right singular vectors.
    exact_threshold : int
        When ``min(m, n) <= exact_threshold`` (and ``init`` is None) the Gram of the smaller
        side (``gram_update``, float64 accumulator on CPU, float32 on CUDA) is
        eigendecomposed instead: the exact spectrum at the cost of ``m n min(m, n)`` flops.
        Pass 0 to force the randomized path.

    Returns
    -------
    U : (m, k) float64, orthonormal columns
    S : (k,) float64, descending, >= 0
    Vh : (k, n) float64, orthonormal rows
        On the device of the weights; ``dW ~= U diag(S) Vh``.

    Notes
    -----
    Exact path accuracy: eigenvalues of the Gram carry an absolute error of about
    ``eps * sigma_max^2`` (float64 on CPU, ``eps = 2.2e-16``; float32 on CUDA), so a singular
    value ``sigma_i`` has relative error about ``eps * (sigma_max / sigma_i)^2``: full accuracy
    for the top of the spectrum, none left below ``sqrt(eps) * sigma_max`` (1.5e-8 sigma_max on
    CPU). The Gram side's vectors are float64-accurate for well-separated singular values; the
    other side's are ``dW v_i / sigma_i`` through one fused product whose fp32 output bounds
    them to ~1e-7 relative (float64 with float64 weights). With fp32 weights the difference is
    rounded to fp32 by contract (DESIGN.md item 3), a relative perturbation of ``2^-24`` per
    entry; bf16/fp16 differences of nearby values are exact in fp32.
    Zero or rank-deficient differences give zero singular values with an arbitrary
    orthonormal completion of the singular vectors.
    """
    m, n = check_pair(w0, w1)
    check_k(k, m, n)
    if oversample < 0 or (power_iters is not None and power_iters < 0):
        raise ValueError(
            f"oversample and power_iters must be >= 0, got {oversample} and {power_iters}"
        )
    p = min(m, n)
    gen = generator(seed)
    if init is None and p <= exact_threshold:
        return exact_svd(w0, w1, k, seed=0 if seed is None else seed)
    if init is not None:
        check_matrix(init, "init")
        l = init.shape[1]
        if init.shape[0] != n or not (k <= l <= p):
            raise ValueError(
                f"init must have shape (n, l) = ({n}, l) with k = {k} <= l <= {p}, "
                f"got {tuple(init.shape)}"
            )
        omega = init.to(device=w1.device, dtype=torch.float64)
    else:
        l = min(k + oversample, p)
        omega = gaussian(n, l, gen, w1.device)
    # Imported here: krylov.py builds on this module's helpers.
    from paramgeom.linalg.krylov import RESIDUAL_TOL, block_krylov_svd

    if power_iters is None:
        r = block_krylov_svd(w0, w1, k, omega, max_steps=KRYLOV_MAX_STEPS, tol=RESIDUAL_TOL,
                             seed=0 if seed is None else seed)  # fmt: skip
    else:
        r = block_krylov_svd(w0, w1, k, omega, max_steps=power_iters + 1, tol=0.0,
                             seed=0 if seed is None else seed, one_sided=True)  # fmt: skip
    return r.U.contiguous(), r.S.contiguous(), r.V.T.contiguous()
