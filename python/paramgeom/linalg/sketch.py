"""``Sketch``: streaming linear sketches of ``dW_t = W_t - W_0`` along a trajectory.

DESIGN.md "Kernels (the contract)" item 5, after Tropp, Yurtsever, Udell and Cevher,
"Streaming low-rank matrix approximation with an application to scientific simulation"
(SIAM J. Sci. Comput. 41(4), 2019; Alg. 2-3, sketches and reconstruction with a core
sketch) and "Practical sketching algorithms for low-rank matrix approximation" (SIAM J.
Matrix Anal. Appl. 38(4), 2017). Test matrices are fixed per weight and regenerated from the
seed; each checkpoint's ``dW`` is read once (while it is in memory) into three small
sketches and never stored::

    Y = dW Omega         (m x k)    range sketch        Omega: n x k
    X = Psi dW           (k x n)    co-range sketch     Psi:   k x m
    Z = Phi dW Theta^T   (s x s)    core sketch         Phi: s x m, Theta: s x n

Reconstruction: ``Q = qr(Y)``, ``P = qr(X^T)``, ``C = (Phi Q)^+ Z ((Theta P)^+)^T`` (k x k),
``dW ~= Q C P^T``; the top singular triplets come from the SVD of ``C``.

Sizes from the target rank ``r``: ``k = 2 r + 1`` and ``s = 2 k + 1``. TYUC need ``k > r`` for
the range/co-range bounds and ``s >= 2 k + 1`` for a well-conditioned core solve; twice the
target rank leaves room for a slowly decaying tail. Storage is ``k (m + n) + s^2`` numbers per
weight instead of ``m n``; pass ``range_size`` / ``core_size`` to trade storage for accuracy.

Linearity. The three sketches are linear in ``dW``: the sketches of ``dW = sum_i H_i`` are the
sums of the sketches of the ``H_i``. TYUC build their streaming model on exactly this (both
papers: the matrix arrives as a sequence of linear updates ``A <- theta A + eta H`` and the
sketches are updated the same way, ``Y <- theta Y + eta H Omega`` etc., without ever forming
``A``). :meth:`Sketch.add` exposes it in two ways:

* increments in time: a ``dW`` that arrives as per-step updates ``dW_t - dW_{t-1}`` is
  sketched by adding each increment as it comes;
* row blocks in space: a matrix too large to hold at once (or held as tensor-parallel row
  shards) is sketched one row block ``dW[start:stop]`` at a time, in any order, since
  ``Y[start:stop]`` takes ``dW[start:stop] Omega`` while ``X`` and ``Z`` take
  ``Psi[:, start:stop] dW[start:stop]`` and ``Phi[:, start:stop] dW[start:stop] Theta^T``.

:meth:`Sketch.update` (one whole checkpoint) is :meth:`Sketch.reset` followed by one full
:meth:`Sketch.add`.
"""

from __future__ import annotations

import operator

import torch

from paramgeom.linalg import _ops
from paramgeom.linalg.randomized_svd import check_k, check_pair, generator, orth

__all__ = ["Sketch"]


class Sketch:
    """Streaming sketch of a trajectory of differences ``dW_t = w1_t - w0`` of shape ``(m, n)``.

    DESIGN.md "Kernels" item 5 and "Metrics", Trajectory (Sim_K with the top-K right singular
    vectors of every ``dW_t``, paper K = 16): keep one ``Sketch`` per weight matrix, call
    :meth:`update` with each checkpoint, and :meth:`svd` recovers that checkpoint's top
    singular triplets. :meth:`add` accumulates instead of replacing (increments in time, row
    blocks in space; see the module docstring) and :meth:`reset` zeroes the sketches.

    Parameters
    ----------
    shape : (m, n)
        Shape of the weight matrix.
    rank : int
        Target rank ``r``; range/co-range size ``k = 2 r + 1`` and core size ``s = 2 k + 1``
        (both capped by ``m`` and ``n``) unless ``range_size`` / ``core_size`` are given.
    seed : int
        Seed of the test matrices (CPU ``torch.Generator``, drawn in the order Omega, Psi,
        Phi, Theta); the same seed gives the same sketches on any device.
    device, dtype :
        Where and in what precision the sketches are kept (float64 by default). The test
        matrices are cached on the object (a few ``k (m + n)`` numbers), never per checkpoint.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        rank: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        range_size: int | None = None,
        core_size: int | None = None,
    ) -> None:
        if len(shape) != 2:
            raise ValueError(f"shape must be (m, n), got {tuple(shape)}")
        m, n = int(shape[0]), int(shape[1])
        if m <= 0 or n <= 0:
            raise ValueError(f"shape must be positive, got {(m, n)}")
        check_k(rank, m, n, name="rank")
        k = range_size if range_size is not None else 2 * rank + 1
        k = min(k, m, n)
        s = core_size if core_size is not None else 2 * k + 1
        s = min(s, m, n)
        if k < rank or s < k:
            raise ValueError(f"need rank <= range_size <= core_size, got {rank}, {k}, {s}")
        self.shape = (m, n)
        self.rank = rank
        self.seed = int(seed)
        self.range_size = k
        self.core_size = s
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        g = generator(self.seed)

        def draw(r: int, c: int) -> torch.Tensor:
            return torch.randn(r, c, generator=g, dtype=torch.float64).to(self.device)

        self._omega = draw(n, k)  # Omega
        self._psi_t = draw(k, m).T.contiguous()  # Psi^T, m x k
        self._phi = draw(s, m)  # Phi
        self._theta_t = draw(s, n).T.contiguous()  # Theta^T, n x s
        self._right = torch.cat([self._omega, self._theta_t], dim=1)  # one pass: [Omega, Theta^T]
        self.Y: torch.Tensor | None = None
        self.X: torch.Tensor | None = None
        self.Z: torch.Tensor | None = None

    def update(self, w0: torch.Tensor, w1: torch.Tensor) -> Sketch:
        """Replace the sketches with those of this checkpoint's ``dW = w1 - w0``.

        :meth:`reset` then :meth:`add` of the whole matrix (the inputs are checked first, so a
        bad pair leaves the sketches as they were). Two fused products while the pair is in
        memory: ``dW [Omega, Theta^T]`` gives ``Y`` and ``dW Theta^T`` (then
        ``Z = Phi (dW Theta^T)``), ``dW^T Psi^T`` gives ``X^T``.
        """
        start, stop = self._check_block(w0, w1, None)
        self.reset()
        self._accumulate(w0, w1, start, stop)
        return self

    def add(
        self,
        w0: torch.Tensor,
        w1: torch.Tensor,
        rows: slice | tuple[int, int] | None = None,
    ) -> Sketch:
        """Add the sketches of ``w1 - w0`` to the current ones (linearity, TYUC 2017/2019).

        The sketches are linear in ``dW``, so a ``dW`` that arrives as a sum of pieces is
        sketched piece by piece, never formed:

        * increments in time: ``add(p_{t-1}, p_t)`` for consecutive states ``p_t`` (or any
          pair whose difference is the increment) accumulates ``dW = sum_t (p_t - p_{t-1})``;
        * row blocks in space: with ``rows=slice(start, stop)`` (or a ``(start, stop)`` pair),
          ``w0`` and ``w1`` are rows ``start:stop`` of the full ``(m, n)`` pair, and
          ``Y[start:stop] += dW_b Omega``, ``X += Psi[:, start:stop] dW_b``,
          ``Z += Phi[:, start:stop] dW_b Theta^T`` with ``dW_b = w1 - w0``. Blocks may come in
          any order; blocks that partition ``[0, m)`` give the sketches of the whole matrix
          (up to rounding of the sums). An empty block adds nothing.

        Products go through the same fused kernels as :meth:`update` (``diff_matmul`` of the
        block pair, the difference formed tile by tile); the sums are taken in float64 and
        rounded once into the sketch ``dtype``. Before any :meth:`update` / :meth:`reset`
        the sketches start from zero. Accumulation is in place: ``Y``, ``X``, ``Z`` are
        modified (``.clone()`` them to keep a snapshot; :meth:`state_dict` returns copies).

        Raises
        ------
        TypeError
            Non-tensor or non-floating weights, ``rows`` not a slice / pair, non-int bounds.
        ValueError
            Mismatched pair shapes or devices, a block whose column count is not ``n`` or whose
            row count is not ``stop - start``, bounds outside ``[0, m]`` or ``start > stop``,
            a slice with a step other than 1, or a ``rows`` pair of the wrong length.
        """
        start, stop = self._check_block(w0, w1, rows)
        if self.Y is None:
            self.reset()
        self._accumulate(w0, w1, start, stop)
        return self

    def reset(self) -> Sketch:
        """Zero the sketches (fresh tensors; the test matrices are unchanged)."""
        m, n = self.shape
        k, s = self.range_size, self.core_size

        def zeros(r: int, c: int) -> torch.Tensor:
            return torch.zeros(r, c, dtype=self.dtype, device=self.device)

        self.Y, self.X, self.Z = zeros(m, k), zeros(k, n), zeros(s, s)
        return self

    def _rows(self, rows: slice | tuple[int, int] | None) -> tuple[int, int]:
        """``rows`` as ``(start, stop)`` with ``0 <= start <= stop <= m``."""
        m = self.shape[0]
        if rows is None:
            return 0, m
        if isinstance(rows, slice):
            if rows.step not in (None, 1):
                raise ValueError(f"rows must be a contiguous slice (step 1), got step {rows.step}")
            bounds = (
                0 if rows.start is None else rows.start,
                m if rows.stop is None else rows.stop,
            )
        elif isinstance(rows, (tuple, list)):
            if len(rows) != 2:
                raise ValueError(
                    f"rows must be a (start, stop) pair, got {len(rows)} entries: {tuple(rows)}"
                )
            bounds = tuple(rows)
        else:
            raise TypeError(
                f"rows must be None, a slice or a (start, stop) pair, got {type(rows).__name__}"
            )
        start, stop = (_index(b, name) for b, name in zip(bounds, ("start", "stop"), strict=True))
        if start < 0 or stop > m:
            raise ValueError(
                f"rows [{start}, {stop}) outside the matrix: need 0 <= start <= stop <= m = {m} "
                "(negative indices are not supported)"
            )
        if start > stop:
            raise ValueError(f"rows [{start}, {stop}): start must be <= stop")
        return start, stop

    def _check_block(
        self, w0: torch.Tensor, w1: torch.Tensor, rows: slice | tuple[int, int] | None
    ) -> tuple[int, int]:
        """Validate a (block) pair against ``rows`` and the sketch shape; ``(start, stop)``."""
        b, nb = check_pair(w0, w1)
        if rows is None:
            if (b, nb) != self.shape:
                raise ValueError(f"shape mismatch: sketch is for {self.shape}, got {(b, nb)}")
            return 0, b
        start, stop = self._rows(rows)
        if nb != self.shape[1]:
            raise ValueError(
                f"shape mismatch: block has {nb} columns, sketch is for {self.shape} "
                f"(n = {self.shape[1]})"
            )
        if b != stop - start:
            raise ValueError(
                f"shape mismatch: rows [{start}, {stop}) need a block of {stop - start} rows, "
                f"got {b} (block shape {(b, nb)})"
            )
        return start, stop

    def _accumulate(self, w0: torch.Tensor, w1: torch.Tensor, start: int, stop: int) -> None:
        """Add the sketches of the (validated) block ``w1 - w0`` = rows ``start:stop``.

        The kernels of :meth:`update`: ``dW_b [Omega, Theta^T]`` gives ``dW_b Omega`` (into
        ``Y[start:stop]``) and ``dW_b Theta^T`` (``Z += Phi[:, start:stop] (dW_b Theta^T)``);
        ``dW_b^T Psi^T[start:stop]`` gives the block's ``X^T``. Float64 products, added to the
        sketches in place (one rounding into ``dtype``).
        """
        if stop == start:
            return  # an empty block contributes nothing
        dev = w1.device
        right = _ops.diff_matmul(w0, w1, self._right.to(dev)).to(self.device)
        psi_t = self._psi_t[start:stop].to(dev)
        xt = _ops.diff_matmul(w0, w1, psi_t, transpose=True).to(self.device)
        k = self.range_size
        self.Y[start:stop] += right[:, :k]
        self.Z += self._phi[:, start:stop] @ right[:, k:]
        self.X += xt.T

    def svd(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-``k`` singular triplets of the sketched ``dW`` (default ``k = rank``).

        TYUC 2019 reconstruction with the core sketch: ``Q = qr(Y)``, ``P = qr(X^T)``,
        ``C = (Phi Q)^+ Z ((Theta P)^+)^T``, ``C = U_c S V_c^T``, returns ``(Q U_c, S,
        (P V_c)^T)`` truncated to ``k`` (at most ``range_size``), float64.

        Accuracy (TYUC 2019, Thm 5.1): ``E ||dW - Q C P^T||_F^2 <= (1 + ...) *`` the best
        rank-``k`` tail energy; singular values past ``rank`` are progressively less accurate.
        """
        if self.Y is None:
            raise RuntimeError("Sketch.svd() before any update() / add() / reset()")
        kk = self.rank if k is None else k
        if isinstance(kk, bool) or not isinstance(kk, int) or not (1 <= kk <= self.range_size):
            raise ValueError(f"k must be an int in [1, {self.range_size}], got {k!r}")
        y = self.Y.to(torch.float64)
        x = self.X.to(torch.float64)
        z = self.Z.to(torch.float64)
        q = orth(y)  # m x k
        p = orth(x.T)  # n x k
        q1, r1 = torch.linalg.qr(self._phi @ q)  # (Phi Q) = Q1 R1, s x k
        t = torch.linalg.solve_triangular(r1, q1.T @ z, upper=True)  # (Phi Q)^+ Z, k x s
        q2, r2 = torch.linalg.qr(self._theta_t.T @ p)  # (Theta P), s x k
        c = torch.linalg.solve_triangular(r2, q2.T @ t.T, upper=True).T  # k x k
        uc, s, vch = torch.linalg.svd(c)
        u = q @ uc[:, :kk]
        vh = vch[:kk] @ p.T
        return u.contiguous(), s[:kk].contiguous(), vh.contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The sketches (copies, on CPU) and their parameters, as tensors only (for journaling).

        ``meta`` is an int64 tensor ``[m, n, rank, seed, range_size, core_size]``; the test
        matrices are not stored (they are regenerated from the seed).
        """
        m, n = self.shape
        meta = torch.tensor(
            [m, n, self.rank, self.seed, self.range_size, self.core_size], dtype=torch.int64
        )
        out = {"meta": meta}
        if self.Y is not None:
            # Copies: the live sketches are accumulated in place by add().
            out.update({name: getattr(self, name).to("cpu", copy=True) for name in "YXZ"})
        return out

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], device: torch.device | str | None = None
    ) -> Sketch:
        """Rebuild a :class:`Sketch` (test matrices regenerated from the seed)."""
        try:
            m, n, rank, seed, k, s = (int(v) for v in state["meta"].tolist())
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not a Sketch state dict: {exc}") from None
        dtype = state["Y"].dtype if "Y" in state else torch.float64
        sk = cls((m, n), rank, seed, device=device, dtype=dtype, range_size=k, core_size=s)
        if "Y" in state:
            # Copies, so that add() never writes into the caller's state dict.
            sk.Y = state["Y"].to(sk.device, copy=True)
            sk.X = state["X"].to(sk.device, copy=True)
            sk.Z = state["Z"].to(sk.device, copy=True)
            if sk.Y.shape != (m, k) or sk.X.shape != (k, n) or sk.Z.shape != (s, s):
                raise ValueError("Sketch state dict: sketch shapes do not match meta")
        return sk


def _index(value: object, name: str) -> int:
    """An int row bound (``operator.index``; bools refused)."""
    if isinstance(value, bool):
        raise TypeError(f"rows {name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"rows {name} must be an int, got {type(value).__name__}") from None
