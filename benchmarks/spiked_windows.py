"""One spiked matrix's top-K SVD on the exact path: the float32 window with the spikes
projected out against the float64 path, one thread.

The matrix is bf16: a Gaussian bulk ``N(0, 0.02^2)`` (largest singular value about ``edge =
0.02 * 2 sqrt(n)``) plus 8 spikes from ``R * edge`` down to ``R * edge / 2`` on random
orthonormal vectors, as ``paramgeom synth --base-spikes 8 --spike-size R`` writes base
matrices. For each R, ``exact_svd`` at K = n / 8 runs twice: with the projection turned off
(``eigen.deflation_count`` answering None: one float32 window, then the float64 Gram and
solve) and as the package runs it. Printed as JSON: seconds, the float32 windows taken, the
largest angle (degrees; cosine form, whose floor is about 3e-6) between the two runs' top-K
subspaces and the relative difference of their singular values (the float64 path is the
reference: within 1e-5 degree of float64 SVDs, tests/test_float32_deflation.py).

Run: ``python benchmarks/spiked_windows.py --n 4096 --spikes 30 300 1000``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does

import torch  # noqa: E402

from paramgeom.checkpoints.synth import SynthSpec, _add_spikes  # noqa: E402
from paramgeom.linalg import eigen  # noqa: E402

_svd = importlib.import_module("paramgeom.linalg.randomized_svd")


def spiked(n: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """The bulk, then synth's own spikes (``--base-spikes 8 --spike-size ratio``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n, generator=g) * 0.02
    _add_spikes(x, SynthSpec(base_spikes=8, spike_size=ratio), g)
    return x.bfloat16()


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.linalg.svdvals(a.T @ b).clamp(max=1.0).min().acos().rad2deg().item()


def run(n: int, ratios: list[float]) -> list[dict]:
    torch.set_num_threads(1)
    k = n // 8
    widths: list[int] = []
    real_window, real_count = eigen.top_window, eigen.deflation_count

    def spy(g, width, **kw):
        widths.append(width)
        return real_window(g, width, **kw)

    _svd.top_window = spy
    out = []
    try:
        for ratio in ratios:
            w = spiked(n, ratio)
            got = {}
            for mode in ("float64_path", "now"):
                eigen.deflation_count = real_count if mode == "now" else (lambda *a: None)
                widths.clear()
                t0 = time.perf_counter()
                u, s, vt = _svd.exact_svd(None, w, k)
                got[mode] = (time.perf_counter() - t0, list(widths), u, s, vt.T)
            ref, now = got["float64_path"], got["now"]
            out.append({
                "n": n, "k": k, "spike_size": ratio,
                "seconds_float64_path": round(ref[0], 3), "seconds_now": round(now[0], 3),
                "windows_now": now[1],
                "angle_left_deg": _angle_deg(ref[2], now[2]),
                "angle_right_deg": _angle_deg(ref[4], now[4]),
                "singular_values_rel": ((now[3] - ref[3]).abs() / ref[3]).max().item(),
            })  # fmt: skip
    finally:
        _svd.top_window, eigen.deflation_count = real_window, real_count
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="matrix side (default 2048)")
    p.add_argument("--spikes", type=float, nargs="+", default=[30.0, 300.0],
                   help="largest spike over the bulk's edge (default 30 300)")  # fmt: skip
    args = p.parse_args(argv)
    print(json.dumps(run(args.n, args.spikes), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
