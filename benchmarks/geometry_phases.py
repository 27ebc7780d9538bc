"""Where one matrix's full geometry goes on the exact path: seconds per phase, one thread.

For the first ``--matrices`` 2-D tensors of a pair with min(m, n) >= 512 (a ``paramgeom
synth`` pair or any safetensors folder pair with the same file names), each phase of the
default ``paramgeom diff`` is timed alone: dW's spectrum (``diff_svdvals``: float64 Gram
and LAPACK eigenvalues), W0's and W1's top-K pairs (``top_subspaces``: float32 Gram,
subset eigensolver, float64 Rayleigh-Ritz) and, apart, the Grams inside them (the float64
Gram of dW, the float32 Gram of W0), so that "Grams" and "the rest" (LAPACK and the Ritz
products) can be told apart. K is the engine's rule (``DiffOptions().subspace_k``). Counts
of float64 fallbacks (the float32 window failing its bound) are reported too.

Run: ``python benchmarks/geometry_phases.py BASE TUNED [--matrices 6]``; prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI does

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from paramgeom import linalg  # noqa: E402
from paramgeom.engine.compute import DiffOptions  # noqa: E402
from paramgeom.linalg import _ops  # noqa: E402

_svd = importlib.import_module("paramgeom.linalg.randomized_svd")


def _pairs(base: Path, tuned: Path, limit: int):
    seen = 0
    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fb, safe_open(str(tuned / f.name), "pt") as ft:
            for name in fb.keys():  # noqa: SIM118 (safe_open has no iterator)
                w0 = fb.get_tensor(name)
                if w0.dim() != 2 or min(w0.shape) < 512:
                    continue
                yield name, w0, ft.get_tensor(name)
                seen += 1
                if seen >= limit:
                    return


def _phases(w0: torch.Tensor, w1: torch.Tensor, k: int) -> dict[str, float]:
    side = "right" if w0.shape[1] <= w0.shape[0] else "left"
    out = {}
    for phase, work in (
        ("dW_spectrum", lambda: linalg.diff_svdvals(w0, w1)),
        ("W0_top_k", lambda: linalg.top_subspaces(w0, k)),
        ("W1_top_k", lambda: linalg.top_subspaces(w1, k)),
        ("gram_float64_dW", lambda: _ops.gram(w0, w1, side)),
        ("gram_float32_W0", lambda: _ops.gram32(None, w0, side)),
    ):
        t = time.perf_counter()
        work()
        out[phase] = time.perf_counter() - t
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path)
    p.add_argument("tuned", type=Path)
    p.add_argument("--matrices", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)  # one worker's thread
    fallbacks = collections.Counter()
    float64_path = _svd._exact_svd_float64

    def counted(*a, **k):
        fallbacks["float64"] += 1
        return float64_path(*a, **k)

    _svd._exact_svd_float64 = counted
    opts = DiffOptions()
    total: collections.Counter = collections.Counter()
    per = []
    for name, w0, w1 in _pairs(args.base, args.tuned, args.matrices):
        k = opts.subspace_k(min(w0.shape))
        phases = _phases(w0, w1, k)
        total.update(phases)
        per.append({"name": name, "shape": list(w0.shape), "k": k, **phases})
    spectra = total["dW_spectrum"] + total["W0_top_k"] + total["W1_top_k"]
    grams = total["gram_float64_dW"] + 2 * total["gram_float32_W0"]
    print(json.dumps({
        "matrices": per, "total": dict(total), "float64_fallbacks": fallbacks["float64"],
        "gram_fraction": grams / spectra if spectra else None,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
