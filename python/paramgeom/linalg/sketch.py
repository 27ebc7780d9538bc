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
"""

from __future__ import annotations

import torch

from paramgeom.linalg import _ops
from paramgeom.linalg.randomized_svd import check_k, check_pair, generator, orth

__all__ = ["Sketch"]


class Sketch:
    """Streaming sketch of a trajectory of differences ``dW_t = w1_t - w0`` of shape ``(m, n)``.

    DESIGN.md "Kernels" item 5 and "Metrics", Trajectory (Sim_K with the top-K right singular
    vectors of every ``dW_t``, paper K = 16): keep one ``Sketch`` per weight matrix, call
    :meth:`update` with each checkpoint, and :meth:`svd` recovers that checkpoint's top
    singular triplets.

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

        Two fused products while the pair is in memory: ``dW [Omega, Theta^T]`` gives ``Y`` and
        ``dW Theta^T`` (then ``Z = Phi (dW Theta^T)``), ``dW^T Psi^T`` gives ``X^T``.
        """
        m, n = check_pair(w0, w1)
        if (m, n) != self.shape:
            raise ValueError(f"shape mismatch: sketch is for {self.shape}, got {(m, n)}")
        dev = w1.device
        right = _ops.diff_matmul(w0, w1, self._right.to(dev)).to(self.device)
        xt = _ops.diff_matmul(w0, w1, self._psi_t.to(dev), transpose=True).to(self.device)
        k = self.range_size
        self.Y = right[:, :k].to(self.dtype).contiguous()
        self.Z = (self._phi @ right[:, k:]).to(self.dtype)
        self.X = xt.T.to(self.dtype).contiguous()
        return self

    def svd(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-``k`` singular triplets of the last sketched ``dW`` (default ``k = rank``).

        TYUC 2019 reconstruction with the core sketch: ``Q = qr(Y)``, ``P = qr(X^T)``,
        ``C = (Phi Q)^+ Z ((Theta P)^+)^T``, ``C = U_c S V_c^T``, returns ``(Q U_c, S,
        (P V_c)^T)`` truncated to ``k`` (at most ``range_size``), float64.

        Accuracy (TYUC 2019, Thm 5.1): ``E ||dW - Q C P^T||_F^2 <= (1 + ...) *`` the best
        rank-``k`` tail energy; singular values past ``rank`` are progressively less accurate.
        """
        if self.Y is None:
            raise RuntimeError("Sketch.svd() before any update()")
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
        """The sketches and their parameters, as tensors only (for journaling).

        ``meta`` is an int64 tensor ``[m, n, rank, seed, range_size, core_size]``; the test
        matrices are not stored (they are regenerated from the seed).
        """
        m, n = self.shape
        meta = torch.tensor(
            [m, n, self.rank, self.seed, self.range_size, self.core_size], dtype=torch.int64
        )
        out = {"meta": meta}
        if self.Y is not None:
            out.update(Y=self.Y.cpu(), X=self.X.cpu(), Z=self.Z.cpu())
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
            sk.Y = state["Y"].to(sk.device)
            sk.X = state["X"].to(sk.device)
            sk.Z = state["Z"].to(sk.device)
            if sk.Y.shape != (m, k) or sk.X.shape != (k, n) or sk.Z.shape != (s, s):
                raise ValueError("Sketch state dict: sketch shapes do not match meta")
        return sk
