"""``linalg.GramSum``: the right Gram of a difference streamed in row blocks (what
``paramgeom diff`` accumulates for a matrix over the chunk budget), on the ``syrk`` path and
the kernel path, against a float64 oracle of the whole difference."""

from __future__ import annotations

import pytest
import torch

from paramgeom import linalg
from paramgeom.linalg import _blas, _ops


def _pair(rows: int, n: int, seed: int, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(rows, n, generator=g).to(dtype)
    w1 = (w0.float() + 0.01 * torch.randn(rows, n, generator=g)).to(dtype)
    return w0, w1


def _oracle(w0, w1) -> torch.Tensor:
    d = w1.double() - (0 if w0 is None else w0.double())
    return d.T @ d


def _streamed(w0, w1, cuts, n: int) -> torch.Tensor:
    acc = linalg.GramSum(n)
    edges = [0, *cuts, w1.shape[0]]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        acc.add(w1[a:b], None if w0 is None else w0[a:b])
    return acc.result()


SYRK = pytest.mark.skipif(
    not _blas.available(torch.float64), reason="SciPy's BLAS pointers are not reachable"
)


@pytest.mark.parametrize("path", [pytest.param("syrk", marks=SYRK), "kernel"])
@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize(
    "rows, n, cuts",
    [(1, 1, []), (9, 5, [0, 0, 4, 9]), (300, 67, [1, 150, 151]), (257, 130, [128])],
)
def test_gram_sum_equals_the_whole_difference_gram(monkeypatch, path, with_base, rows, n, cuts):
    """Any cut into row blocks (empty ones included) sums to the whole difference's Gram,
    to float64 rounding, and the result is exactly symmetric."""
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 1 if path == "syrk" else 10**9)
    w0, w1 = _pair(rows, n, seed=rows + n)
    base = w0 if with_base else None
    got = _streamed(base, w1, cuts, n)
    want = _oracle(base, w1)
    assert got.dtype == torch.float64 and got.shape == (n, n)
    assert torch.equal(got, got.T)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-14 * scale * max(1, rows) ** 0.5


@SYRK
def test_gram_sum_takes_syrk_from_its_size_rule_and_the_kernel_elsewhere(monkeypatch):
    """The path follows ``gram``'s: ``syrk`` under ``auto`` from ``SYRK_FLOAT64_MIN``
    columns, the kernel below it and under a named backend; both give the same Gram."""
    w0, w1 = _pair(64, 40, seed=3)
    calls = []
    real = _blas.syrk_
    monkeypatch.setattr(_blas, "syrk_", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 40)
    by_syrk = _streamed(w0, w1, [20], 40)
    assert calls
    calls.clear()
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 41)
    by_kernel = _streamed(w0, w1, [20], 40)
    assert not calls
    monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", 40)
    with linalg.kernel_backend("torch"):
        named = _streamed(w0, w1, [20], 40)
    assert not calls
    scale = by_kernel.abs().max().item()
    for other in (by_kernel, named):
        assert (by_syrk - other).abs().max().item() <= 1e-14 * scale


def test_gram_sum_of_float64_weights_is_the_exact_oracle():
    """Float64 weights (the tests' oracles) are summed in float64 without the kernels."""
    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(33, 12, generator=g, dtype=torch.float64)
    w1 = w0 + 1e-3 * torch.randn(33, 12, generator=g, dtype=torch.float64)
    got = _streamed(w0, w1, [10, 11], 12)
    want = _oracle(w0, w1)
    assert (got - want).abs().max().item() <= 1e-15 * want.abs().max().item()


def test_gram_sum_refuses_misshapen_blocks_and_a_closed_sum():
    acc = linalg.GramSum(4)
    with pytest.raises(ValueError, match="4 columns"):
        acc.add(torch.zeros(3, 5, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="4 columns"):
        acc.add(torch.zeros(4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="differ in shape"):
        acc.add(torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(2, 4, dtype=torch.bfloat16))
    acc.add(torch.ones(2, 4, dtype=torch.bfloat16))
    assert torch.equal(acc.result(), torch.full((4, 4), 2.0, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="closed"):
        acc.add(torch.ones(2, 4, dtype=torch.bfloat16))
    assert torch.equal(acc.result(), torch.full((4, 4), 2.0, dtype=torch.float64))


def test_gram_sum_of_nothing_is_zero():
    """No blocks, or only empty ones: the zero Gram (a 0-column sum is 0 x 0)."""
    acc = linalg.GramSum(3)
    acc.add(torch.zeros(0, 3, dtype=torch.bfloat16))
    assert torch.equal(acc.result(), torch.zeros(3, 3, dtype=torch.float64))
    assert linalg.GramSum(0).result().shape == (0, 0)


@SYRK
def test_streamed_matrix_figures_agree_on_both_paths(tmp_path, monkeypatch):
    """``paramgeom diff`` of a matrix read in row blocks: the same row whether its three
    Grams are summed by ``syrk`` or by the kernel, and the ranks and right angles of the
    matrix read whole."""
    import csv

    from safetensors.torch import save_file

    from paramgeom.cli import main

    w0, w1 = _pair(300, 48, seed=11)
    for side, w in (("base", w0), ("tuned", w1)):
        (tmp_path / side).mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": w}, tmp_path / side / "model.safetensors")

    def row(name: str, chunk: str, syrk_min: int) -> dict[str, str]:
        monkeypatch.setattr(_ops, "SYRK_FLOAT64_MIN", syrk_min)
        out = tmp_path / name
        args = ["diff", str(tmp_path / "base"), str(tmp_path / "tuned"), "--out", str(out)]
        assert main([*args, "--chunk-bytes", chunk, "--quiet"]) == 0
        with open(out / "tensors.csv", newline="") as f:
            (got,) = list(csv.DictReader(f))
        return got

    by_syrk = row("syrk", "4096", 1)
    by_kernel = row("kernel", "4096", 10**9)
    whole = row("whole", "1GiB", 10**9)

    def close(a: str, b: str) -> bool:
        try:
            x, y = float(a), float(b)
        except ValueError:
            return a == b
        return x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))

    assert by_syrk.keys() == by_kernel.keys()
    for key in by_syrk:
        assert close(by_syrk[key], by_kernel[key]), (key, by_syrk[key], by_kernel[key])
    figures = (
        "stable_rank",
        "effective_rank",
        "spectral_drift",
        "angle_right_max",
        "angle_right_mean",
    )
    for key in figures:
        assert by_syrk[key] not in ("", None), key
        assert close(by_syrk[key], whole[key]), (key, by_syrk[key], whole[key])
