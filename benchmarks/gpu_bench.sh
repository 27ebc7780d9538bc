#!/usr/bin/env bash
# One command for a lent GPU machine: build paramgeom (CUDA extension included), run the
# GPU tests, then the diff_stats benchmarks on every CUDA backend, and print the tables.
# Usage (repository root): bash benchmarks/gpu_bench.sh [OUT_DIR]
# The GPU image has no network: it builds with the packages already installed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/data}}
mkdir -p "$out"
status=0

echo "== build"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
pip install --no-build-isolation --no-deps . > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
python -m paramgeom.cli backends

echo "== GPU tests (all tests, CUDA ones included)"
python -m pytest -q -x tests 2>&1 | tee "$out/tests.txt" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== paramgeom bench (every kernel, every CUDA backend, vs torch and the measured limits)"
python -m paramgeom.cli bench --device cuda --out "$out/bench" 2>&1 | tee "$out/bench.txt" || status=1

echo "== diff_stats sweeps per backend"
for backend in cuda cupy triton torch; do
  python benchmarks/bench_diff_stats.py --device cuda --backend "$backend" \
    --sizes 1e6 1e7 1e8 2e8 --dtypes bf16 fp32 --reps 20 --json "$out/diff_stats_$backend.json" \
    2>&1 | tee "$out/diff_stats_$backend.md" || status=1
done
exit $status
