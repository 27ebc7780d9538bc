"""Scalar geometry metrics of weight updates: pure functions on tensors or singular values.

Every definition follows DESIGN.md "Metrics" (paper: "Geometry of On-Policy Distillation: A
Parameter-Space Analysis", arXiv 2606.07082). Inputs are singular values (1-D, any order) or
matrices (2-D, whose singular values are then computed in float64); results are Python
floats computed in float64. Matrices passed here are small or already materialised (e.g. a
row of a report); for large weight differences get the spectrum from
:func:`paramgeom.linalg.randomized_svd` first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "HillFit",
    "MaskOverlap",
    "effective_rank",
    "frobenius_norm",
    "hill_alpha",
    "hill_fit",
    "low_magnitude_mask",
    "principal_mask",
    "principal_mask_overlap",
    "sim_k",
    "spectral_drift",
    "stable_rank",
]

HILL_TAIL_FRACTION = 0.1
# Kolmogorov-Smirnov choice of the Hill cut-off (``tail_fraction="ks"``): the smallest
# candidate tail size (lowered to ``n_pos - 1`` when fewer eigenvalues are positive; a
# KS distance over a handful of points says little), the distance within which two
# candidates count as tied (rounding; the larger tail then wins), and the most float64
# elements one block of the vectorised scan may hold (memory stays bounded for any n).
KS_MIN_TAIL = 5
KS_TIE_TOL = 1e-12
_KS_CHUNK_ELEMENTS = 1 << 23
HILL_TAIL_CHOICES = ("a float in (0, 1)", "'ks'")


def _singular_values(x: torch.Tensor, name: str = "s") -> torch.Tensor:
    """Float64 singular values (descending, >= 0) of a 1-D spectrum or a 2-D matrix."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() == 1:
        s = x.to(torch.float64)
        if bool((s < 0).any()):
            raise ValueError(f"{name}: singular values must be >= 0")
        return torch.sort(s, descending=True).values
    if x.dim() == 2:
        if x.numel() == 0:
            return torch.zeros(0, dtype=torch.float64, device=x.device)
        return torch.linalg.svdvals(x.to(torch.float64))
    raise ValueError(
        f"{name} must be 1-D singular values or a 2-D matrix, got shape {tuple(x.shape)}"
    )


def _check_finite(s: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def stable_rank(x: torch.Tensor) -> float:
    """Stable rank ``srank(dW) = ||dW||_F^2 / ||dW||_2^2 = sum_i s_i^2 / s_1^2``.

    DESIGN.md "Metrics", Update rank (paper: the OPD update locks to stable rank < 16).
    ``x``: singular values (1-D) or the matrix (2-D). 1 for rank one, ``n`` for an
    orthogonal ``n x n``; 0.0 for a zero (or empty) matrix, by convention.
    """
    s = _singular_values(x)
    _check_finite(s, "stable_rank input")
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0.0
    return float((s / s[0]).square().sum())


def effective_rank(x: torch.Tensor) -> float:
    """Effective rank ``exp(H(p))`` with ``p_i = s_i / sum_j s_j`` and ``H = -sum p_i log p_i``.

    DESIGN.md "Metrics", Update rank: "entropy of normalised singular values". The
    normalisation is by the sum of the singular values themselves (L1, Roy & Vetterli 2007),
    not of their squares; natural log; ``0 log 0 = 0``. Between 1 (rank one) and the rank
    (equal singular values); 0.0 for a zero matrix.
    """
    s = _singular_values(x)
    _check_finite(s, "effective_rank input")
    total = float(s.sum()) if s.numel() else 0.0
    if total == 0.0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def frobenius_norm(x: torch.Tensor) -> float:
    """Frobenius norm ``||dW||_F = sqrt(sum_ij dW_ij^2) = sqrt(sum_i s_i^2)``, in float64.

    DESIGN.md "Metrics", Update rank / Trajectory (``||dW_t||_F``). A 1-D input is taken as
    singular values (the same number as the 2-norm of the vector); a 2-D input as the
    matrix (no SVD needed).
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() not in (1, 2):
        raise ValueError(f"expected singular values (1-D) or a matrix (2-D), got {tuple(x.shape)}")
    return float(torch.linalg.vector_norm(x.to(torch.float64).reshape(-1)))


def spectral_drift(s0: torch.Tensor, s1: torch.Tensor) -> float:
    """Normalised spectral shift ``NSS = ||sigma(W1) - sigma(W0)||_2 / ||sigma(W0)||_2``.

    DESIGN.md "Metrics", Spectral drift (paper: about 1e-3 SFT, 1e-4 OPD, 1e-5 RLVR). Both
    spectra are sorted descending before subtraction (singular values are matched by rank);
    each argument is singular values (1-D) or the matrix (2-D); they must have the same
    length. ``inf`` when ``sigma(W0) = 0`` and ``sigma(W1) != 0``, 0.0 when both are zero.
    """
    a = _singular_values(s0, "s0")
    b = _singular_values(s1, "s1")
    if a.shape != b.shape:
        raise ValueError(f"spectra must have the same length, got {a.numel()} and {b.numel()}")
    num = float(torch.linalg.vector_norm(b - a.to(b.device)))
    den = float(torch.linalg.vector_norm(a))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


@dataclass(frozen=True)
class HillFit:
    """One Hill fit of the eigenvalues ``lambda_i = s_i^2`` (see :func:`hill_fit`).

    ``alpha``: the tail index alpha-hat (``nan`` when undefined); ``k``: the tail size (the
    ``k`` largest eigenvalues; 0 when fewer than 3 are positive); ``x_min``: the cut-off
    ``lambda_(k+1)``, an eigenvalue (not a singular value); ``ks_distance``: the
    Kolmogorov-Smirnov distance between the empirical CDF of the ``k`` tail eigenvalues
    and the fitted power law (``nan`` when ``alpha`` is); ``n_pos``: the number of positive
    eigenvalues.
    """

    alpha: float
    k: int
    x_min: float
    ks_distance: float
    n_pos: int


def _check_tail_fraction(tail_fraction: float | str) -> float | str:
    allowed = " or ".join(HILL_TAIL_CHOICES)
    if isinstance(tail_fraction, str):
        if tail_fraction.strip().lower() == "ks":
            return "ks"
        raise ValueError(f"tail_fraction must be {allowed}, got {tail_fraction!r}")
    try:
        f = float(tail_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"tail_fraction must be {allowed}, got {tail_fraction!r}") from None
    if not (0.0 < f < 1.0):
        raise ValueError(f"tail_fraction must be in (0, 1) or 'ks', got {tail_fraction}")
    return tail_fraction  # as given: k is computed exactly as before


def _ks_of_fit(lam: torch.Tensor, k: int, alpha: float) -> float:
    """KS distance of the ``k`` largest of ``lam`` (descending) to the power law with
    exponent ``alpha`` above ``x_min = lam[k]``.

    With ``Q_i = (lambda_(i+1) / x_min)^(1 - alpha)`` the fitted survival function at the
    tail value of descending index ``i`` (ascending rank ``k - i``), the two one-sided gaps
    ``ECDF(y) - P(y) = Q_i - i / k`` and ``P(y) - ECDF(y-) = (i + 1) / k - Q_i`` give
    ``D = 1 / (2k) + max_i |Q_i - (i + 1/2) / k|`` (exact also with tied eigenvalues).
    """
    logs = torch.log(lam[:k] / lam[k])
    q = torch.exp((1.0 - alpha) * logs)
    mid = (torch.arange(k, dtype=torch.float64, device=lam.device) + 0.5) / k
    return float((q - mid).abs().max()) + 0.5 / k


def _ks_scan(lam: torch.Tensor, k_lo: int, k_hi: int) -> tuple[int, float]:
    """The tail size ``k`` in ``[k_lo, k_hi]`` whose Hill fit has the smallest KS distance
    (ties within :data:`KS_TIE_TOL`: the larger ``k``), and that distance (``inf`` when no
    candidate has a fit: every tail flat).

    Vectorised over ``k`` in float64: a block of candidate rows ``k`` against the tail
    columns ``i < k``, ``log(lambda_(i+1) / lambda_(k+1))`` masked to ``i < k``; blocks hold
    at most ``_KS_CHUNK_ELEMENTS`` elements, so memory is O(n) per row and bounded overall.
    """
    n = lam.numel()
    dev = lam.device
    dist = torch.empty(k_hi - k_lo + 1, dtype=torch.float64, device=dev)
    rows = max(1, _KS_CHUNK_ELEMENTS // max(1, n))
    for k0 in range(k_lo, k_hi + 1, rows):
        k1 = min(k_hi, k0 + rows - 1)
        ks = torch.arange(k0, k1 + 1, device=dev)
        kf = ks.to(torch.float64)[:, None]
        idx = torch.arange(k1, device=dev)
        inside = idx[None, :] < ks[:, None]
        logs = torch.log(lam[None, :k1] / lam[ks][:, None])
        logs = torch.where(inside, logs, torch.zeros((), dtype=torch.float64, device=dev))
        denom = logs.sum(dim=1, keepdim=True)
        ok = denom > 0
        # alpha - 1 = k / denom; a flat tail (denom 0) has no fit.
        slope = torch.where(ok, kf / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        q = torch.exp(-slope * logs)
        gap = (q - (idx[None, :].to(torch.float64) + 0.5) / kf).abs()
        gap = torch.where(inside, gap, torch.zeros((), dtype=torch.float64, device=dev))
        d = gap.amax(dim=1) + 0.5 / kf[:, 0]
        dist[k0 - k_lo : k1 - k_lo + 1] = torch.where(ok[:, 0], d, math.inf)
    best = float(dist.min())
    if not math.isfinite(best):
        return k_hi, math.inf
    tied = torch.nonzero(dist <= best + KS_TIE_TOL).reshape(-1)
    return k_lo + int(tied[-1]), best


def hill_fit(x: torch.Tensor, tail_fraction: float | str = HILL_TAIL_FRACTION) -> HillFit:
    """Hill fit of the power-law tail of the squared singular values, with its cut-off.

    The estimator and conventions are those of :func:`hill_alpha` (read its docstring);
    this returns the whole fit as a :class:`HillFit`: ``alpha``, the tail size ``k``, the
    cut-off ``x_min = lambda_(k+1)`` and the Kolmogorov-Smirnov distance of the fit (for a
    fixed ``tail_fraction`` too, then of that fit). ``tail_fraction``: a float in (0, 1)
    (``k = max(2, round(tail_fraction * n_pos))``) or ``"ks"`` (``k`` minimising the KS
    distance, Clauset, Shalizi & Newman 2009, section 3.3).
    """
    choice = _check_tail_fraction(tail_fraction)
    s = _singular_values(x)
    _check_finite(s, "hill_alpha input")
    lam = s.square()
    lam = lam[lam > 0]
    npos = lam.numel()
    if npos < 3:
        return HillFit(math.nan, 0, math.nan, math.nan, npos)
    if choice == "ks":
        k_hi = npos - 1
        k_lo = max(2, min(KS_MIN_TAIL, k_hi))
        k, _ = _ks_scan(lam, k_lo, k_hi)
    else:
        k = min(npos - 1, max(2, round(choice * npos)))
    x_min = float(lam[k])
    logs = torch.log(lam[:k] / lam[k])
    denom = float(logs.sum())
    if denom <= 0.0:
        return HillFit(math.nan, k, x_min, math.nan, npos)
    alpha = 1.0 + k / denom
    return HillFit(alpha, k, x_min, _ks_of_fit(lam, k, alpha), npos)


def hill_alpha(x: torch.Tensor, tail_fraction: float | str = HILL_TAIL_FRACTION) -> float:
    """Hill estimate of the power-law tail index alpha-hat of the squared singular values.

    DESIGN.md "Metrics", Trajectory: "Hill tail index alpha-hat of the squared singular
    values". The eigenvalues ``lambda_i = s_i^2`` (of the correlation matrix ``dW^T dW``, as
    WeightWatcher fits) are sorted descending; with the ``k`` largest as the tail and
    ``lambda_(k+1)`` as its lower cut-off (``x_min``)::

        alpha_hat = 1 + k / sum_{i<=k} log(lambda_(i) / lambda_(k+1))

    the maximum-likelihood exponent of a density ``p(lambda) ~ lambda^-alpha`` above
    ``x_min`` (Hill 1975; Clauset, Shalizi & Newman 2009, eq. 3.1), the same exponent
    WeightWatcher's power-law fit reports (typically 2 to 6 for trained layers; smaller is
    heavier-tailed).

    ``tail_fraction`` chooses ``k`` over the ``n_pos`` positive eigenvalues:

    - a float in (0, 1) (default 0.1): ``k = max(2, round(tail_fraction * n_pos))``. Ten per
      cent is the usual Hill compromise between bias (a deeper cut reaches into the bulk,
      where the power law does not hold) and variance (the estimator's relative standard
      error is ``1 / sqrt(k)``). But a fixed fraction knows nothing of the spectrum: where
      the power-law tail is shorter than 10% it cuts into the bulk (alpha-hat biased, usually
      low), where it is longer it throws tail away (needless variance).
    - ``"ks"``: the cut-off is chosen by the Kolmogorov-Smirnov criterion of Clauset,
      Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 51 (2009),
      section 3.3, as WeightWatcher does: for every candidate ``k`` from
      :data:`KS_MIN_TAIL` (5; ``n_pos - 1`` when that is smaller) to ``n_pos - 1``, fit
      alpha-hat as above with ``x_min = lambda_(k+1)`` and measure the KS distance
      ``D = sup_x |F_k(x) - P(x)|`` between the empirical CDF ``F_k`` of the ``k`` tail
      eigenvalues and the fitted ``P(x) = 1 - (x / x_min)^(1 - alpha_hat)`` on
      ``x >= x_min``; the ``k`` with the smallest ``D`` wins (distances within
      :data:`KS_TIE_TOL` tie and the larger ``k`` wins), i.e. the cut-off where the power
      law fits best. Vectorised over ``k`` in float64, O(n_pos^2) work in blocks of bounded
      memory. WeightWatcher's own tail also includes ``x_min`` and its KS differs in
      detail, so compare trends rather than third digits with its numbers.

    Returns ``nan`` when fewer than 3 eigenvalues are positive or the tail is flat (all
    equal to the cut-off). :func:`hill_fit` returns ``k``, ``x_min`` and the KS distance as
    well.
    """
    return hill_fit(x, tail_fraction).alpha


def sim_k(v_t: torch.Tensor, v_end: torch.Tensor, K: int = 16) -> float:
    """Subspace similarity ``Sim_K(t, t_end) = (1/K) ||V_K(t)^T V_K(t_end)||_F^2``.

    DESIGN.md "Metrics", Trajectory (paper: K = 16; locking when Sim_K stays above 0.9).
    ``v_t``, ``v_end``: ``(n, >= K)`` orthonormal columns, the right singular vectors of
    ``dW_t`` and ``dW_{t_end}`` in descending order (pass ``Vh.T`` from an SVD); the first
    ``K`` columns are used. 1 for the same subspace, ``K / n`` on average for random ones,
    0 for orthogonal ones; equals the mean squared cosine of the principal angles.
    """
    for name, v in (("v_t", v_t), ("v_end", v_end)):
        if not isinstance(v, torch.Tensor) or v.dim() != 2:
            raise ValueError(f"{name} must be a 2-D (n, K) tensor of column vectors")
    if isinstance(K, bool) or not isinstance(K, int) or K <= 0:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if v_t.shape[0] != v_end.shape[0]:
        raise ValueError(f"row mismatch: {tuple(v_t.shape)} vs {tuple(v_end.shape)}")
    if v_t.shape[1] < K or v_end.shape[1] < K:
        raise ValueError(f"need at least K = {K} columns, got {v_t.shape[1]} and {v_end.shape[1]}")
    a = v_t[:, :K].to(torch.float64)
    b = v_end[:, :K].to(dtype=torch.float64, device=a.device)
    return float((a.T @ b).square().sum()) / K


def _top_fraction_mask(values: torch.Tensor, fraction: float, largest: bool) -> torch.Tensor:
    """Boolean mask of exactly ``round(fraction * numel)`` entries with the largest (or
    smallest) ``values``; ties broken by position (stable sort)."""
    flat = values.reshape(-1)
    count = round(fraction * flat.numel())
    order = torch.sort(flat, descending=largest, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:count]] = True
    return mask.reshape(values.shape)


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return a


def low_magnitude_mask(w0: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Low-magnitude mask: the bottom ``alpha`` fraction of entries of ``|W0|``.

    DESIGN.md "Metrics", Principal / low-magnitude masks (alpha = 0.5). Exactly
    ``round(alpha * numel)`` entries; ties at the threshold broken by position.
    """
    if not isinstance(w0, torch.Tensor) or w0.dim() != 2:
        raise ValueError("w0 must be a 2-D tensor")
    return _top_fraction_mask(w0.to(torch.float32).abs(), _check_alpha(alpha), largest=False)


def principal_mask(w0: torch.Tensor, r: int = 64, alpha: float = 0.5) -> torch.Tensor:
    """Principal mask: the top ``alpha`` fraction of entries of ``|U_r S_r V_r^T|``, the
    magnitude of W0's rank-``r`` reconstruction.

    DESIGN.md "Metrics", Principal / low-magnitude masks (r = 64, alpha = 0.5). The top-r
    triplets come from :func:`paramgeom.linalg.top_subspaces` (exact Gram path for
    ``min(m, n) <= 4096``); ``r`` is capped at ``min(m, n)``. The reconstruction is formed
    in float32 row blocks; only the float32 magnitudes and the mask are full size.
    """
    from paramgeom.linalg import top_subspaces

    if not isinstance(w0, torch.Tensor) or w0.dim() != 2:
        raise ValueError("w0 must be a 2-D tensor")
    a = _check_alpha(alpha)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"r must be a positive int, got {r!r}")
    rr = min(r, min(w0.shape))
    u, s, v = top_subspaces(w0, rr)
    us = (u * s).to(torch.float32)
    vt = v.T.to(torch.float32)
    mag = torch.empty(w0.shape, dtype=torch.float32, device=w0.device)
    step = max(1, (1 << 22) // max(1, w0.shape[1]))
    for i in range(0, w0.shape[0], step):
        mag[i : i + step] = (us[i : i + step] @ vt).abs()
    return _top_fraction_mask(mag, a, largest=True)


@dataclass(frozen=True)
class MaskOverlap:
    """How the changed entries fall in the principal and low-magnitude masks of W0.

    ``frac_changed_in_principal`` = |C and P| / |C| and ``frac_changed_in_low`` =
    |C and L| / |C| (compare with ``alpha``, their value if changes ignored the masks);
    ``changed_rate_*`` = |C and M| / |M|, the changed fraction inside each mask and over all.
    NaN where a denominator is zero.
    """

    n_changed: int
    n_total: int
    alpha: float
    r: int
    frac_changed_in_principal: float
    frac_changed_in_low: float
    changed_rate_principal: float
    changed_rate_low: float
    changed_rate_overall: float


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def principal_mask_overlap(
    w0: torch.Tensor, changed: torch.Tensor, r: int = 64, alpha: float = 0.5
) -> MaskOverlap:
    """Overlap of a boolean ``changed`` mask with W0's principal and low-magnitude masks.

    DESIGN.md "Metrics", Principal / low-magnitude masks (optional; r = 64, alpha = 0.5):
    principal mask = top ``alpha`` fraction of entries of the rank-``r`` reconstruction of
    W0 by magnitude (:func:`principal_mask`), low-magnitude mask = bottom ``alpha`` fraction
    of ``|W0|`` (:func:`low_magnitude_mask`); reports how the changed entries (e.g. those
    failing the paper's ``|w1 - w0| <= 1e-3 max(|w0|, |w1|)`` rule) fall in each.
    """
    if not isinstance(changed, torch.Tensor) or changed.dtype != torch.bool:
        raise TypeError("changed must be a boolean tensor")
    if not isinstance(w0, torch.Tensor) or w0.dim() != 2:
        raise ValueError("w0 must be a 2-D tensor")
    if changed.shape != w0.shape:
        raise ValueError(
            f"shape mismatch: w0 has shape {tuple(w0.shape)}, changed has {tuple(changed.shape)}"
        )
    a = _check_alpha(alpha)
    p = principal_mask(w0, r, a)
    low = low_magnitude_mask(w0, a)
    c = changed.to(p.device)
    nc = int(c.sum())
    ncp = int((c & p).sum())
    ncl = int((c & low).sum())
    return MaskOverlap(
        n_changed=nc,
        n_total=c.numel(),
        alpha=a,
        r=min(r, min(w0.shape)),
        frac_changed_in_principal=_ratio(ncp, nc),
        frac_changed_in_low=_ratio(ncl, nc),
        changed_rate_principal=_ratio(ncp, int(p.sum())),
        changed_rate_low=_ratio(ncl, int(low.sum())),
        changed_rate_overall=_ratio(nc, c.numel()),
    )
