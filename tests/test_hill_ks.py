"""Kolmogorov-Smirnov choice of the Hill cut-off (``paramgeom.metrics.hill_fit`` /
``hill_alpha(..., tail_fraction="ks")``; DESIGN.md "Metrics", Trajectory; Clauset, Shalizi
& Newman 2009, section 3.3) against a plain-loop NumPy oracle, on Pareto tails of known
index, and the unchanged fixed-fraction default."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paramgeom import metrics as pm

# ---------------------------------------------------------------------------------------
# Oracle: float64 NumPy, one candidate k at a time, the KS supremum taken from counts.


def _oracle_ks_distance(tail: np.ndarray, x_min: float, alpha: float) -> float:
    """sup_{x >= x_min} |F_emp(x) - P(x)|: at each distinct tail value v the empirical CDF
    jumps from #(tail < v)/k to #(tail <= v)/k while P is continuous and increasing, so the
    supremum is among these two one-sided gaps (0 at x_min itself when x_min is no tail value).
    """
    k = len(tail)
    d = 0.0
    for v in np.unique(tail):
        below = 0
        at_or_below = 0
        for t in tail:
            below += t < v
            at_or_below += t <= v
        p = 1.0 - (v / x_min) ** (1.0 - alpha)
        d = max(d, abs(at_or_below / k - p), abs(p - below / k))
    return d


def _oracle_ks_fit(s: np.ndarray) -> tuple[float, int, float, float]:
    """(alpha, k, x_min, D) of the KS scan, or (nan, ...) as the module documents."""
    lam = np.sort(np.asarray(s, dtype=np.float64) ** 2)[::-1]
    lam = lam[lam > 0]
    n = len(lam)
    if n < 3:
        return math.nan, 0, math.nan, math.nan
    k_hi = n - 1
    k_lo = max(2, min(pm.KS_MIN_TAIL, k_hi))
    fits = []
    for k in range(k_lo, k_hi + 1):
        x_min = lam[k]
        denom = float(np.sum(np.log(lam[:k] / x_min)))
        if denom <= 0.0:
            continue
        alpha = 1.0 + k / denom
        fits.append((k, alpha, x_min, _oracle_ks_distance(lam[:k], x_min, alpha)))
    if not fits:
        return math.nan, k_hi, float(lam[k_hi]), math.nan
    best = min(f[3] for f in fits)
    k, alpha, x_min, d = max((f for f in fits if f[3] <= best + pm.KS_TIE_TOL), key=lambda f: f[0])
    return alpha, k, float(x_min), d


def _old_hill_alpha(x, tail_fraction=0.1):
    """The pre-KS implementation of ``hill_alpha``, verbatim apart from names."""
    if not (0.0 < float(tail_fraction) < 1.0):
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    s = x.to(torch.float64) if x.dim() == 1 else torch.linalg.svdvals(x.to(torch.float64))
    s = torch.sort(s, descending=True).values
    lam = s.square()
    lam = lam[lam > 0]
    npos = lam.numel()
    if npos < 3:
        return math.nan
    k = min(npos - 1, max(2, round(tail_fraction * npos)))
    logs = torch.log(lam[:k] / lam[k])
    denom = float(logs.sum())
    if denom <= 0.0:
        return math.nan
    return 1.0 + k / denom


# ---------------------------------------------------------------------------------------
# Spectra


def _spectra() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(20240611)
    out = []
    for m, n in ((30, 20), (64, 64), (120, 50)):
        out.append((f"gauss{m}x{n}", np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False)))
    for a in (2.0, 3.5):  # power-law eigenvalues: s = sqrt(Pareto)
        out.append((f"pareto{a}", np.sqrt(rng.uniform(size=80) ** (-1.0 / (a - 1.0)))))
    lam = np.concatenate([rng.uniform(size=25) ** (-0.5), rng.uniform(0.1, 0.9, size=60)])
    out.append(("pareto+bulk", np.sqrt(lam)))
    for n in (3, 4, 5, 6):
        out.append((f"tiny{n}", rng.uniform(0.1, 3.0, size=n)))
    out.append(("ties", np.round(rng.uniform(0.5, 3.0, size=40), 1)))
    out.append(("ties-top", np.array([5.0, 5.0, 5.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5])))
    out.append(("flat-top", np.array([3.0] * 8 + [2.0, 1.0])))
    z = rng.standard_exponential(50) ** 2
    z[rng.choice(50, 12, replace=False)] = 0.0
    out.append(("zeros", z))
    out.append(("zeros-tiny", np.array([0.0, 2.0, 0.0, 1.0, 0.5, 0.0])))
    return out


@pytest.mark.parametrize("name,s", _spectra(), ids=[n for n, _ in _spectra()])
def test_ks_matches_numpy_oracle(name, s):
    alpha, k, x_min, d = _oracle_ks_fit(s)
    fit = pm.hill_fit(torch.from_numpy(s), "ks")
    assert fit.k == k
    assert fit.n_pos == int(np.sum(s > 0))
    assert fit.x_min == pytest.approx(x_min, rel=1e-15)
    assert fit.alpha == pytest.approx(alpha, abs=1e-10)
    assert fit.ks_distance == pytest.approx(d, abs=1e-10)
    assert pm.hill_alpha(torch.from_numpy(s), tail_fraction="ks") == fit.alpha
    # Any order, float32 input, a 2-D matrix with that spectrum: same cut-off.
    shuffled = torch.from_numpy(np.random.default_rng(1).permutation(s))
    assert pm.hill_fit(shuffled, "ks").k == k
    if len(s) > 1:
        q = np.linalg.qr(np.random.default_rng(2).standard_normal((len(s) + 3, len(s))))[0]
        m = torch.from_numpy(q * s)  # singular values s up to rounding
        fm = pm.hill_fit(m, "ks")
        if name.startswith(("gauss", "pareto")):  # no ties for rounding to reorder
            assert fm.k == k and fm.alpha == pytest.approx(alpha, rel=1e-8)


def test_ks_blocks_match_one_block(monkeypatch):
    """Bounded-memory blocks of candidates (forced tiny here) give the same choice."""
    rng = np.random.default_rng(7)
    s = np.sqrt(np.concatenate([rng.uniform(size=40) ** (-1 / 1.5), rng.uniform(0.1, 0.9, 200)]))
    whole = pm.hill_fit(torch.from_numpy(s), "ks")
    for elems in (1, 97, 1000, 5000):
        monkeypatch.setattr(pm, "_KS_CHUNK_ELEMENTS", elems)
        assert pm.hill_fit(torch.from_numpy(s), "ks") == whole
    alpha, k, _, _ = _oracle_ks_fit(s)
    assert whole.k == k and whole.alpha == pytest.approx(alpha, abs=1e-10)


def test_ties_go_to_the_larger_k(monkeypatch):
    """Exact distance ties do not occur on real spectra, so widen the tie tolerance: every
    candidate within it of the best counts as tied and the largest such k wins."""
    spectra = dict(_spectra())
    monkeypatch.setattr(pm, "KS_TIE_TOL", 1.0)
    s = spectra["gauss64x64"]
    assert pm.hill_fit(torch.from_numpy(s), "ks").k == len(s) - 1
    monkeypatch.setattr(pm, "KS_TIE_TOL", 0.03)
    for name in ("gauss30x20", "pareto+bulk", "ties", "zeros"):
        s = spectra[name]
        alpha, k, _, _ = _oracle_ks_fit(s)
        fit = pm.hill_fit(torch.from_numpy(s), "ks")
        assert fit.k == k and fit.alpha == pytest.approx(alpha, abs=1e-10)
    monkeypatch.setattr(pm, "KS_TIE_TOL", 0.0)
    assert pm.hill_fit(torch.from_numpy(s), "ks").k == _oracle_ks_fit(s)[1]


def test_fixed_fraction_ks_distance_matches_oracle():
    rng = np.random.default_rng(3)
    s = np.linalg.svd(rng.standard_normal((90, 60)), compute_uv=False)
    for frac in (0.1, 0.3, 0.5):
        fit = pm.hill_fit(torch.from_numpy(s), frac)
        lam = np.sort(s**2)[::-1]
        k = min(len(lam) - 1, max(2, round(frac * len(lam))))
        assert fit.k == k and fit.x_min == lam[k]
        d = _oracle_ks_distance(lam[:k], lam[k], fit.alpha)
        assert fit.ks_distance == pytest.approx(d, abs=1e-12)
        # The KS choice is at least as good a fit as any fixed one.
        assert pm.hill_fit(torch.from_numpy(s), "ks").ks_distance <= fit.ks_distance + 1e-12


# ---------------------------------------------------------------------------------------
# Recovery of a known tail index


def _pareto_with_bulk(alpha: float, n: int, n_tail: int, seed: int) -> torch.Tensor:
    """Singular values whose squares are ``n_tail`` Pareto(alpha) draws (density
    ~ lambda^-alpha above x_min = 1) over a bulk of ``n - n_tail`` uniform values in
    [0.05, 0.9]: a flat, non-power-law bulk below the tail."""
    rng = np.random.default_rng(seed)
    tail = rng.uniform(size=n_tail) ** (-1.0 / (alpha - 1.0))
    bulk = rng.uniform(0.05, 0.9, size=n - n_tail)
    return torch.from_numpy(np.sqrt(np.concatenate([tail, bulk])))


SEEDS = range(6)


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_ks_recovers_pareto_alpha_where_fixed_is_biased(alpha):
    """A 5% power-law tail (100 of 2000): the fixed 10% cut takes 100 bulk values into the
    tail (x_min near the top of the bulk, alpha-hat far too high); the KS cut lands near
    the top of the bulk and recovers alpha. Hill's standard error at k ~ 90 is about
    (alpha - 1) / sqrt(k) ~ 0.1 alpha, so the per-seed bound is loose and the mean over
    six seeds carries the 10% claim."""
    ks_est, fixed_est, ks_k = [], [], []
    for seed in SEEDS:
        s = _pareto_with_bulk(alpha, 2000, 100, seed)
        f = pm.hill_fit(s, "ks")
        ks_est.append(f.alpha)
        ks_k.append(f.k)
        fixed_est.append(pm.hill_alpha(s))
    ks_est, fixed_est = np.array(ks_est), np.array(fixed_est)
    ks_err = np.abs(ks_est / alpha - 1.0)
    fixed_err = np.abs(fixed_est / alpha - 1.0)
    assert abs(ks_est.mean() / alpha - 1.0) < 0.10
    assert ks_err.max() < 0.30
    assert all(50 <= k <= 100 for k in ks_k)  # never reaches into the bulk
    assert fixed_err.min() > 0.15  # the fixed cut is biased for every seed ...
    assert np.all(ks_err <= fixed_err)  # ... and KS is closer on each


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_ks_uses_long_tail(alpha):
    """A 50% power-law tail (1000 of 2000): the fixed 10% cut is unbiased but keeps only
    200 of the 1000 tail values; KS takes a deeper cut and so has the smaller spread."""
    ks_est, fixed_est = [], []
    for seed in SEEDS:
        s = _pareto_with_bulk(alpha, 2000, 1000, seed)
        ks_est.append(pm.hill_alpha(s, "ks"))
        fixed_est.append(pm.hill_alpha(s))
    ks_est, fixed_est = np.array(ks_est), np.array(fixed_est)
    assert abs(ks_est.mean() / alpha - 1.0) < 0.05
    assert np.abs(ks_est / alpha - 1.0).max() < 0.10
    rmse_ks = math.sqrt(np.mean((ks_est - alpha) ** 2))
    rmse_fixed = math.sqrt(np.mean((fixed_est - alpha) ** 2))
    assert rmse_ks < rmse_fixed


def test_exact_power_law_quantiles():
    # lambda_i = (N / i)^(1 / (alpha - 1)): a power law everywhere, KS keeps most of it.
    n, alpha = 3000, 3.0
    lam = (n / np.arange(1, n + 1)) ** (1.0 / (alpha - 1.0))
    fit = pm.hill_fit(torch.from_numpy(np.sqrt(lam)), "ks")
    assert fit.alpha == pytest.approx(alpha, rel=0.02)
    assert fit.k > n // 2


# ---------------------------------------------------------------------------------------
# Input checks and the unchanged default


@pytest.mark.parametrize("bad", ["auto", "", "k-s", "0.1", "fixed"])
def test_bad_tail_fraction_strings(bad):
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"tail_fraction must be .*\(0, 1\).*'ks'"):
        pm.hill_alpha(s, tail_fraction=bad)
    with pytest.raises(ValueError, match="'ks'"):
        pm.hill_fit(s, tail_fraction=bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, math.nan, None])
def test_bad_tail_fraction_numbers(bad):
    with pytest.raises(ValueError, match="tail_fraction"):
        pm.hill_fit(torch.tensor([8.0, 4.0, 2.0, 1.0]), tail_fraction=bad)


def test_ks_spelling_and_nan_cases():
    s = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])
    assert pm.hill_fit(s, "KS") == pm.hill_fit(s, " ks ") == pm.hill_fit(s, "ks")
    for frac in ("ks", 0.1):
        for few in ([1.0, 0.0, 0.0], [2.0, 1.0], [], [0.0, 0.0, 0.0, 0.0]):
            f = pm.hill_fit(torch.tensor(few, dtype=torch.float64), frac)
            assert math.isnan(f.alpha) and f.k == 0 and math.isnan(f.ks_distance)
            assert math.isnan(pm.hill_alpha(torch.tensor(few, dtype=torch.float64), frac))
        f = pm.hill_fit(torch.ones(10), frac)  # flat: no fit
        assert math.isnan(f.alpha) and math.isnan(f.ks_distance)
    with pytest.raises(ValueError, match="NaN or Inf"):
        pm.hill_fit(torch.tensor([1.0, math.inf, 2.0, 3.0]), "ks")
    assert "hill_fit" in pm.__all__ and "HillFit" in pm.__all__


def test_default_path_unchanged():
    rng = np.random.default_rng(11)
    cases = [torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0]), torch.ones(10), torch.tensor([1.0, 0, 0])]
    cases += [torch.from_numpy(rng.standard_normal((m, n))) for m, n in ((40, 30), (7, 9))]
    cases += [torch.from_numpy(np.sqrt(rng.pareto(2.0, size=n) + 1)) for n in (3, 25, 997)]
    cases += [torch.from_numpy(rng.standard_normal(300)).abs().float()]
    for x in cases:
        for frac in (0.1, 0.05, 0.25, 0.5, np.float32(0.1), np.float64(0.3)):
            old = _old_hill_alpha(x, frac)
            new = pm.hill_alpha(x, frac)
            assert (math.isnan(old) and math.isnan(new)) or new == old  # bit-identical
        old = _old_hill_alpha(x)
        new = pm.hill_alpha(x)
        assert (math.isnan(old) and math.isnan(new)) or new == old
        assert (math.isnan(old) and math.isnan(pm.hill_fit(x).alpha)) or pm.hill_fit(x).alpha == old
