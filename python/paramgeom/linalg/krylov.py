"""``block_krylov_svd``: top-k singular triplets of an implicit difference by block Krylov.

The top-k singular subspaces of ``A = w1 - w0`` (``w0=None``: of ``w1``) from the block
Krylov space of ``A^T A`` and a start block ``Omega`` (``n x b``)::

    K_j = span{Omega, (A^T A) Omega, ..., (A^T A)^(j-1) Omega}      (dimension j b)

built by block Lanczos bidiagonalisation with full reorthogonalisation (Golub, Luk and
Overton, ACM TOMS 7(2), 1981), which is the randomized block Krylov method of Musco and Musco
("Randomized block Krylov methods for stronger and faster approximate singular value
decomposition", NeurIPS 2015) with a Gaussian ``Omega``. Each step reads the weights twice,
through ``diff_matmul`` only (:mod:`paramgeom.linalg._ops`; ``A`` is never formed)::

    V_j = orth((I - V V^T) F)        F: the part of A^T U_{j-1} outside span(V) (F = Omega first)
    U_j = orth((I - U U^T) A V_j)    B = U^T A V grows by a block column
    F   = (I - V V^T) A^T U_j        next block, and the Ritz residuals

``V = [V_1 .. V_j]`` (``n x jb``) and ``U = [U_1 .. U_j]`` (``m x jb``) are orthonormal,
``A V = U B`` holds, and ``A^T U = V B^T + F E_j^T`` (``E_j`` picks the last block). The Ritz
triplets come from the small SVD ``B = P diag(s) Q^T`` (Rayleigh-Ritz): ``u_i = U p_i``,
``v_i = V q_i``, ``s_i``; then ``A v_i = s_i u_i`` exactly and

    r_i = ||A^T u_i - s_i v_i|| = ||F P[last block, i]||

costs no extra product. The stop test is ``max_{i <= k} r_i <= tol * s_1``. Unlike the step
of subspace iteration, the residual bounds the error (Wedin's sin-theta theorem): the top-k
left and right Ritz subspaces are within ``sin theta <= r / (s_k - sigma_{k+1})`` of the true
ones, and each Ritz value within ``r_i^2 / gap`` of a singular value, so a spectrum without a
gap at ``k`` makes the method work longer instead of stopping early with a wrong answer.

Why Krylov: subspace iteration keeps only the last block and converges like
``(sigma_{b+1} / sigma_k)^(2 t)``; the Krylov space keeps every block, and its Chebyshev
polynomials converge like ``exp(-2 t sqrt(gap))`` instead of ``exp(-2 t gap)`` on a relative
gap ``gap`` (Saad, "Numerical methods for large eigenvalue problems", 2011, Sec. 6.6), the
difference between hundreds of steps and tens on the gapless spectra of weight matrices.

The exact Gram path (``exact_svd``: ``p^2 max(m, n)`` flops and one subset eigensolve,
``p = min(m, n)``) gives the triplets instead when the basis would pass ``exact_fraction``
(default 1/2) of ``p``, when the residual's rate over the last step predicts that it would
before the test passes, or from the start when two blocks would: a basis of half the space
costs about what the Gram does, and its Ritz problems more. Gaussian (Marchenko-Pastur)
spectra at k = p / 16 need 75-85% of the space and so end there. When the basis would
outgrow ``max_dim`` the iteration restarts thickly: the top ``max_dim - 2 b`` Ritz pairs
become the new basis (``B`` diagonal) and ``F`` carries on, so no product is lost.

The small problem is solved as the top-k eigenpairs of ``B^T B`` (LAPACK's subset solver),
``s_i = ||B q_i||`` and ``p_i = B q_i / s_i``; its own residual ``||B^T p_i - s_i q_i||`` is
part of ``r_i``.

Accuracy: products run in fp32 (the kernels' contract), so residuals below about
``1e-7 s_1`` are rounding; the residual here adds the measured disagreement of the ``A`` and
``A^T`` products (``V^T A^T U_j`` against ``B``'s last block row) to ``||F P||``.

Where the rows live: the method touches ``A``'s rows (the left vectors ``U``) only through
products, inner products ``X^T Y`` over all rows, QR factorisations and seeded random
blocks; :class:`WholeMatrix` does these in this process, and
:class:`paramgeom.linalg.distributed.RowShardedMatrix` on rows split over ranks (all-reduced
inner products, TSQR), so one method gives the one-process and the sharded figures (equal
to rounding). Everything of size ``n`` or smaller is replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from paramgeom.linalg import _ops
from paramgeom.linalg.eigen import top_eigenpairs
from paramgeom.linalg.randomized_svd import (
    check_finite,
    exact_svd,
    gaussian,
    normalise_columns,
)

__all__ = [
    "RESIDUAL_TOL",
    "KrylovSVD",
    "WholeMatrix",
    "WholeRows",
    "block_krylov",
    "block_krylov_svd",
]

# Default stop test: the largest relative Ritz residual of the top k, max_i ||A^T u_i - s_i v_i||
# / s_1. fp32 products put a floor of about 1e-7 under it.
RESIDUAL_TOL = 1e-6

# A new direction whose norm after reorthogonalisation is below this fraction of the block's
# largest column is rounding, not information: it is replaced by a random direction (the
# Krylov space is invariant there), which keeps the block width and the basis orthonormal.
_DEAD = 1e-10
# Columns that shrank below this fraction in reorthogonalisation get a third pass ("twice
# is enough" holds when a column keeps a fair part of its norm).
_SHRUNK = 1e-3


@dataclass(frozen=True)
class KrylovSVD:
    """Top-k Ritz triplets of ``A = w1 - w0``: ``U`` (m, k), ``S`` (k,) descending, ``V``
    (n, k), float64; unpacks as ``U, S, V``.

    ``steps``: block steps run (each one product with ``A`` and one with ``A^T``, of width
    ``b``). ``residual``: ``max_{i <= k} ||A^T u_i - s_i v_i|| / s_1`` at the end (0 for
    ``A = 0``, where every residual is 0, and after the exact finish). ``converged``:
    ``residual <= tol``. ``dim``: the Krylov basis's width at the end (``min(m, n)`` after
    the exact finish). ``exact``: whether the exact Gram path gave the triplets.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    steps: int
    converged: bool
    residual: float
    dim: int
    exact: bool = False

    def __iter__(self):
        return iter((self.U, self.S, self.V))


class WholeRows:
    """The vectors of a space of ``size`` rows held whole in this process: the operations the
    method needs on a block of them (inner products over all rows, column norms, QR, seeded
    random blocks), done locally. The right vectors' space is always one of these."""

    def __init__(self, size: int, device) -> None:
        self.size, self.device = int(size), device

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a^T b`` summed over every row."""
        return a.T @ b

    def norms(self, y: torch.Tensor) -> torch.Tensor:
        """Column norms over every row."""
        return torch.linalg.vector_norm(y, dim=0)

    def dot_norms(
        self, a: torch.Tensor | None, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(a^T y, y's column norms)`` over every row (None for ``a=None``): one reduction
        where the rows are split."""
        return (None if a is None else self.dot(a, y)), self.norms(y)

    def qr(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduced QR: this process's rows of ``Q`` and the whole ``R``."""
        return torch.linalg.qr(y)

    def gaussian(self, cols: int, gen: torch.Generator) -> torch.Tensor:
        """This process's rows of a ``size x cols`` Gaussian block drawn from ``gen``."""
        return gaussian(self.size, cols, gen, self.device)


class WholeMatrix(WholeRows):
    """``A = w1 - w0`` (``w0=None``: ``w1``) held whole in this process, read through
    ``diff_matmul`` only; its rows (the left vectors) are a :class:`WholeRows` space."""

    def __init__(self, w0: torch.Tensor | None, w1: torch.Tensor) -> None:
        super().__init__(int(w1.shape[0]), w1.device)
        self.w0, self.w1 = w0, w1
        self.shape = (int(w1.shape[0]), int(w1.shape[1]))

    def mul(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``A x`` (this process's rows) or ``A^T x`` (whole), float64."""
        return _ops.diff_matmul(self.w0, self.w1, x, transpose=transpose)

    def mul_t_dot(self, u: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A^T u, u^T y)`` over every row: one reduction where the rows are split."""
        return self.mul(u, transpose=True), self.dot(u, y)

    def exact(self, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact top-``k`` ``(U, S, V)`` from the Gram of the smaller side
        (``exact_svd``)."""
        u, s, vh = exact_svd(self.w0, self.w1, k, seed=seed)
        return u, s, vh.T.contiguous()


def check_norms(norms: torch.Tensor) -> torch.Tensor:
    """``norms`` (a block's column norms over all rows) when finite; ValueError when not
    (NaN/Inf in the block). Decided on the norms, which are the same wherever the rows live:
    every rank of a sharded block raises alike, with no collective of its own."""
    if not bool(torch.isfinite(norms).all()):
        raise ValueError("non-finite values (NaN/Inf) in w1 - w0; spectra are undefined")
    return norms


def _project_out(
    basis: torch.Tensor | None, y: torch.Tensor, space: WholeRows, first: torch.Tensor | None = None
):
    """``y - basis (basis^T y)`` twice (classical Gram-Schmidt, reorthogonalised); returns the
    remainder and the summed coefficients ``basis^T y``. ``first``: ``basis^T y`` already
    formed."""
    if basis is None or basis.shape[1] == 0:
        return y, None
    c = space.dot(basis, y) if first is None else first
    y = y - basis @ c
    c2 = space.dot(basis, y)
    return y - basis @ c2, c + c2


def _orth(y: torch.Tensor, space: WholeRows) -> torch.Tensor:
    return space.qr(y)[0]


def _random_fill(basis, live, count, space: WholeRows, gen):
    """``count`` random orthonormal columns orthogonal to ``basis`` and ``live``."""
    g = space.gaussian(count, gen)
    for b in (basis, live):
        g, _ = _project_out(b, g, space)
    q = _orth(g, space)
    for b in (basis, live):  # the random block lost length in the projections: clean it
        q, _ = _project_out(b, q, space)
    return _orth(q, space)


def extend_basis(
    basis: torch.Tensor | None,
    y: torch.Tensor,
    gen: torch.Generator,
    scale: float | None = None,
    projected: bool = False,
    space: WholeRows | None = None,
    first: torch.Tensor | None = None,
):
    """Orthonormal ``Q`` with ``y``'s column count, orthogonal to ``basis``, whose span holds
    the part of ``span(y)`` outside ``span(basis)``.

    Rank-revealing (QR, then the SVD of the small ``R``): directions of ``y`` below
    ``_DEAD * scale`` (default ``scale``: ``y``'s largest column) are rounding and are
    replaced by random orthonormal directions. ``projected``: ``y`` is already
    ``(I - basis basis^T)`` of a block whose largest column is ``scale`` (one pass is then
    repeated only for directions that shrank). ``space``: where ``y``'s rows live (default:
    whole in this process); ``first``: ``basis^T y``, already formed. Returns ``(Q, C)`` with
    ``C = basis^T y`` (None without a basis or when ``projected``).
    """
    space = WholeRows(y.shape[0], y.device) if space is None else space
    b = y.shape[1]
    if scale is None:
        scale = float(space.norms(y).max()) if b else 0.0
    coef = None
    if not projected:
        y, coef = _project_out(basis, y, space, first)
    q, r = space.qr(y)
    diag = torch.diagonal(r).abs()
    if scale > 0 and b and float(diag.min()) > _SHRUNK * scale:
        return q, coef  # well conditioned (the usual case): no rank decision to make
    w, sv, _ = torch.linalg.svd(r)
    q = q @ w  # columns by decreasing weight in y; span of the leading ones = y's numerical range
    live = int((sv > _DEAD * scale).sum()) if scale > 0 else 0
    q = q[:, :live]
    if live and float(sv[live - 1]) < _SHRUNK * scale:
        q, _ = _project_out(basis, q, space)
        q = _orth(q, space)
    if live < b:
        q = torch.cat([q, _random_fill(basis, q, b - live, space, gen)], dim=1)
    return q, coef


def block_krylov_svd(
    w0: torch.Tensor | None,
    w1: torch.Tensor,
    k: int,
    start: torch.Tensor,
    max_steps: int,
    tol: float = 0.0,
    max_dim: int | None = None,
    seed: int = 0,
    one_sided: bool = False,
    exact_fraction: float = 0.5,
) -> KrylovSVD:
    """Top-``k`` singular triplets of ``A = w1 - w0`` (``w0=None``: of ``w1``) by block
    Lanczos bidiagonalisation from the start block ``start`` (module docstring).

    Parameters
    ----------
    w0, w1 : torch.Tensor or None
        The implicit matrix ``(m, n)``, read only through ``diff_matmul`` (any kernel dtype,
        or float64 for exact products).
    k : int
        Triplets wanted, ``1 <= k <= min(m, n)``; the stop test covers all ``k``.
    start : torch.Tensor
        ``(n, b)`` start block, ``k <= b`` (Gaussian for a cold start; a previous basis for
        a warm one); converted to float64 and orthonormalised (rank-deficient starts are
        completed with random columns).
    max_steps : int
        Most block steps (each two products of width ``b``). ``0`` still runs one (the
        Rayleigh-Ritz of the start block needs it).
    tol : float
        Stop once ``max_{i <= k} ||A^T u_i - s_i v_i|| <= tol * s_1``; ``0`` runs
        ``max_steps`` steps (a fixed Krylov depth) unless the residual is exactly 0.
    max_dim : int, optional
        Widest basis kept before a thick restart (default: no restart below ``min(m, n)``);
        at least ``3 b``.
    seed : int
        Seeds the random directions that replace rank-deficient ones.
    one_sided : bool
        Unless the residual test passed, return the one-sided Rayleigh-Ritz triplets of
        ``U^T A`` (Musco and Musco's extraction: the last ``A^T`` product's ``F`` widens the
        right space by a block) instead of the two-sided ones of ``B = U^T A V``. For a fixed
        depth (``tol = 0``) they are the better triplets (exact for a matrix of rank below
        ``b`` after one step); ``residual`` still describes the two-sided ones.
    exact_fraction : float
        The exact Gram path answers instead once the basis would pass this fraction of
        ``min(m, n)`` (or from the start when two blocks would), or as soon as the residual's
        rate since the previous step predicts that it would before the test passes: a basis
        of half the space costs about what the Gram of the smaller side does (``p^2 max(m,
        n)`` flops) and its Ritz problems more. ``1.0``: Krylov until a block no longer fits,
        with no prediction.
    """
    return block_krylov(
        WholeMatrix(w0, w1), k, start, max_steps, tol=tol, max_dim=max_dim, seed=seed,
        one_sided=one_sided, exact_fraction=exact_fraction,
    )  # fmt: skip


def block_krylov(
    a: WholeMatrix,
    k: int,
    start: torch.Tensor,
    max_steps: int,
    tol: float = 0.0,
    max_dim: int | None = None,
    seed: int = 0,
    one_sided: bool = False,
    exact_fraction: float = 0.5,
) -> KrylovSVD:
    """:func:`block_krylov_svd` on a matrix ``a`` whose rows may live elsewhere: a
    :class:`WholeMatrix`, or anything with its methods and ``shape`` (the whole ``(m, n)``),
    e.g. :class:`paramgeom.linalg.distributed.RowShardedMatrix`. ``U`` holds this process's
    rows; ``S`` and ``V`` are the same wherever the rows live. The other parameters are
    :func:`block_krylov_svd`'s."""
    m, n = a.shape
    p = min(m, n)
    b = int(start.shape[1])
    if not (1 <= k <= p and 1 <= b <= p) or start.shape[0] != n:
        raise ValueError(f"need k <= {p} and start (n, b) = ({n}, b) with 1 <= b <= {p}")
    if not 0 < exact_fraction <= 1:
        raise ValueError(f"exact_fraction must be in (0, 1], got {exact_fraction}")
    if max_dim is not None and max_dim < 3 * b:
        raise ValueError(f"max_dim must be >= 3 b = {3 * b}, got {max_dim}")
    gen = torch.Generator().manual_seed(int(seed))
    cols = WholeRows(n, a.device)

    # Room for the basis: past exact_fraction of the space the exact Gram path is cheaper,
    # and a block must always fit in what is left.
    room = min(p - b, exact_fraction * p)
    if 2 * b > room:
        return _exact(a, k, 0, seed)

    V = U = None
    B = torch.zeros(0, 0, dtype=torch.float64, device=cols.device)
    f = start.to(device=cols.device, dtype=torch.float64)
    zscale = None
    steps = 0
    res = math.inf
    history = None  # (step, residual) of the last check on the convergence curve
    while True:
        steps += 1
        d = 0 if V is None else V.shape[1]
        # F is already reorthogonalised against V (it is needed so for the residuals).
        v_new, _ = extend_basis(V, f, gen, scale=zscale, projected=V is not None, space=cols)
        av = a.mul(v_new)
        first, norms = a.dot_norms(U, av)
        scale = float(check_norms(norms).max())
        u_new, coef = extend_basis(U, av, gen, scale=scale, space=a, first=first)
        # New block column of B = U^T A V: coefficients on the old U, and on the new block.
        # The new block row under the old columns is zero: A V_old lies in span(U_old).
        top = coef if coef is not None else av.new_zeros(0, b)
        z, new_block = a.mul_t_dot(u_new, av)
        col = torch.cat([top, new_block], dim=0)
        B = torch.cat([torch.cat([B, B.new_zeros(b, d)], dim=0), col], dim=1)
        V = v_new if V is None else torch.cat([V, v_new], dim=1)
        U = u_new if U is None else torch.cat([U, u_new], dim=1)
        check_finite(z, "w1 - w0")  # whole (all-reduced) wherever the rows live
        zscale = float(torch.linalg.vector_norm(z, dim=0).max())
        f, c = _project_out(V, z, cols)
        final = steps >= max(max_steps, 1)
        # A fixed depth (tol = 0) stops early only on a zero residual, which needs A^T U = 0
        # (zscale 0): otherwise no Ritz problem is solved before its last step (half of a
        # monitor record's small eigenproblems, which decide nothing).
        if V.shape[1] >= k and (tol > 0 or final or zscale == 0):
            ritz = _ritz(B, min(k, V.shape[1]), gen)
            res = _residual(ritz, B, f, c, b)
            if res <= tol or final:
                s, pm, qm = ritz
                if one_sided and res > tol:
                    s, pm, qm, V = _one_sided(B, f, V, k, gen, cols)
                return KrylovSVD(U @ pm, s, V @ qm, steps, res <= tol, res, V.shape[1])
            if exact_fraction < 1 and _predicted_dim(history, steps, res, tol, b) > room:
                # At the rate of the last step the basis would pass exact_fraction of the
                # space before the test passes: the exact path is the cheaper from here.
                return _exact(a, k, steps, seed)
            if steps >= 2:  # the first block's residual is not yet on the convergence curve
                history = (steps, res)
        if V.shape[1] + b > room:
            # The next step would pass exact_fraction of the space (or leave no room).
            return _exact(a, k, steps, seed)
        if max_dim is not None and V.shape[1] + b > max_dim:
            keep = max_dim - 2 * b
            s, pm, qm = _ritz(B, keep, gen)
            V, U, B = V @ qm, U @ pm, torch.diag(s)
            # F still spans the part of A^T U (old U, so also the kept U) outside span(V).
            history = None


def _predicted_dim(history, steps, res, tol, b) -> float:
    """Basis width at which the residual would reach ``tol`` if it kept falling at the rate
    measured since ``history = (step, residual)`` (inf if it did not fall; the rate only
    improves later on, as Krylov convergence is superlinear, so this errs towards the exact
    path, which costs about as much as a basis at the switch point)."""
    if history is None or res <= tol or tol <= 0:
        return 0.0
    step0, res0 = history
    if not 0 < res < res0:
        return math.inf
    rate = (res / res0) ** (1.0 / (steps - step0))
    return (steps + math.log(tol / res) / math.log(rate)) * b


def _residual(ritz, B, f, c, b) -> float:
    """``max_i ||A^T u_i - s_i v_i|| / s_1`` of the two-sided Ritz triplets ``ritz = (s, P,
    Q)``: ``||F P_j||`` (P_j: the last block's rows of P), plus the disagreement of the two
    products (``V^T A^T U_j`` against ``B``'s last block row: the fp32 kernels' rounding) and
    the small problem's own residual ``||B^T p_i - s_i q_i||``. 0 when every term is 0
    (``A = 0``), inf when only ``s_1`` is."""
    s, pm, qm = ritz
    last = pm[-b:]
    r = torch.sqrt(
        torch.linalg.vector_norm(f @ last, dim=0) ** 2
        + torch.linalg.vector_norm((c - B[-b:].T) @ last, dim=0) ** 2
        + torch.linalg.vector_norm(B.T @ pm - qm * s, dim=0) ** 2
    )
    rmax, s1 = float(r.max()), float(s[0])
    return rmax / s1 if s1 > 0 else (0.0 if rmax == 0 else math.inf)


def _one_sided(B, f, V, k, gen, cols: WholeRows):
    """Top-``k`` triplets of ``U^T A = [B, E_j T^T] [V, V_f]^T`` (``F = V_f T``; ``E_j`` the
    last block's rows): ``(s, P, W, [V, V_f])`` with right vectors ``[V, V_f] W``."""
    b = f.shape[1]
    v_f, _ = extend_basis(V, f, gen, space=cols)
    top = torch.zeros(B.shape[0], b, dtype=B.dtype, device=B.device)
    top[-b:] = f.T @ v_f
    ba = torch.cat([B, top], dim=1)
    kk = min(k, B.shape[0])
    _, pm = top_eigenpairs(ba @ ba.T, kk)
    bp = ba.T @ pm
    s = torch.linalg.vector_norm(bp, dim=0)
    wm = normalise_columns(bp, s, gen)
    return s, pm, wm, torch.cat([V, v_f], dim=1)


def _ritz(B: torch.Tensor, k: int, gen: torch.Generator):
    """Top-``k`` singular triplets ``(s, P, Q)`` of the small ``B``: ``Q`` the top
    eigenvectors of ``B^T B`` by LAPACK's subset solver (a third of a full SVD's cost at
    d = 700), ``P`` the columns ``B q_i / s_i`` made orthonormal (completed at random where
    ``s_i`` is 0 to rounding)."""
    _, qm = top_eigenpairs(B.T @ B, k)
    bq = B @ qm
    # ||B q_i|| rather than sqrt(lambda_i): accurate to eps s_1, not sqrt(eps) s_1.
    s = torch.linalg.vector_norm(bq, dim=0)
    return s, normalise_columns(bq, s, gen), qm


def _exact(a: WholeMatrix, k: int, steps: int, seed: int) -> KrylovSVD:
    """The exact top-``k`` SVD (``a.exact``: from the Gram of the smaller side), for when the
    Krylov basis would cover the space anyway: ``p^2 max(m, n)`` flops, no wider than the
    products that covering it would take."""
    u, s, v = a.exact(k, seed)
    return KrylovSVD(u, s, v, steps, True, 0.0, min(a.shape), True)
