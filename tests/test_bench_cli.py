"""`paramgeom bench`: the pipeline end to end at tiny sizes, its outputs, and that a wrong
answer fails it (timings themselves are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import paramgeom
from paramgeom import bench


def test_bench_smoke_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "bench", "--smoke", "--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "bench.json").read_text())
    lim = data["limits"]
    assert lim["copy_gbps"] > 0 and lim["gemm_tflops"] > 0
    assert lim["compute_tflops"] == max(lim["gemm_tflops"], lim["fma_tflops"])
    ops = {(r["op"], r["provider"]) for r in data["rows"]}
    for op in ("diff_stats", "diff_matmul", "gram_update"):
        assert (op, "cpu") in ops, f"{op} on the cpu backend missing"
    assert ("diff_stats", "torch_rel_idiom") in ops and ("randomized_svd", "randomized_svd") in ops
    assert ("sketch_update", "sketch_update") in ops
    for r in data["rows"]:
        assert r["p20_ms"] <= r["p50_ms"] <= r["p80_ms"]
    md = (out / "bench.md").read_text()
    assert "| diff_matmul |" in md and "Limits measured in this run" in md
    assert data["machine"]["backends"]["cpu"]


def test_wrong_answer_fails_the_bench(tmp_path, monkeypatch):
    real = paramgeom.diff_stats

    def off_by_one(*args, **kwargs):
        s = real(*args, **kwargs)
        return type(s)(**{**s.__dict__, "n_equal": s.n_equal + 1})

    monkeypatch.setattr(paramgeom, "diff_stats", off_by_one)
    with pytest.raises(bench.WrongAnswerError, match=r"diff_stats\[cpu\] equal count"):
        bench.run(tmp_path, smoke=True)
    assert not (tmp_path / "bench.json").exists()


def test_bench_cuda_without_gpu_is_bad_input(tmp_path):
    if paramgeom.backends()["cuda"].available:
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, "-m", "paramgeom.cli", "bench", "--smoke", "--device", "cuda",
         "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_case_builders_are_what_bench_and_the_pytest_suite_time():
    builders = bench.case_builders("cpu", "smoke")
    assert list(builders) == [
        "diff_stats-bf16-1e+05",
        "diff_stats-fp32-1e+05",
        "diff_matmul-128x512",
        "gram_update-128x512",
        "randomized_svd-128x512",
        "sketch_update-128x512",
    ]
    case = builders["diff_matmul-128x512"]()
    assert case.primary == bench.usable_backends("cpu")[0]
    assert case.baseline == "torch_materialise" and case.baseline in case.providers
    assert case.flop == 2 * 128 * 512 * bench.PRODUCT_K
    with pytest.raises(ValueError, match="profile must be one of"):
        bench.case_builders("cpu", "huge")
