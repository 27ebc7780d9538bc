"""A short, self-contained diff_stats run (the README's first command)."""

from __future__ import annotations

import time

import torch

import paramgeom


def main(n: int = 4096, changed: float = 0.5, seed: int = 0) -> None:
    """Diff a random bf16 matrix against a copy with ``changed`` of its entries nudged by
    about 1%, on the best backend here and on the plain-torch reference, and print both."""
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(n, n, generator=g)).to(torch.bfloat16)
    nudge = 1 + 0.01 * torch.randn(n, n, generator=g)
    mask = torch.rand(n, n, generator=g) < changed
    w1 = torch.where(mask, w0.float() * nudge, w0.float()).to(torch.bfloat16)
    for backend in ("auto", "torch"):
        t0 = time.perf_counter()
        s = paramgeom.diff_stats(w0, w1, rel_tols=(1e-3,), abs_tols=(1e-5,), backend=backend)
        ms = (time.perf_counter() - t0) * 1e3
        print(
            f"{s.backend:>6}: {s.numel:,} bf16 elements in {ms:7.1f} ms | "
            f"unchanged (paper rule, eta=1e-3) {100 * s.unchanged_fraction():.2f}% | "
            f"atol 1e-5 {100 * s.n_within_abs[0] / s.numel:.2f}% | "
            f"||dW||_F/||W0||_F {s.relative_change:.3e}"
        )


if __name__ == "__main__":
    main()
