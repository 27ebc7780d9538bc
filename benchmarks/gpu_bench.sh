#!/usr/bin/env bash
# One command for a lent GPU machine: build paramgeom (CUDA extension included), run the
# GPU tests, `paramgeom bench --device cuda`, the pytest-benchmark cases, the diff_stats
# sweeps on every CUDA backend and whole `paramgeom diff` runs, and print the tables.
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

echo "== pytest-benchmark suite over the same cases (full profile, on the GPU)"
PARAMGEOM_BENCH_DEVICE=cuda PARAMGEOM_BENCH_PROFILE=full python -m pytest -q \
  benchmarks/bench_cases.py --benchmark-enable --benchmark-json "$out/bench_cases.json" \
  2>&1 | tail -40 | tee "$out/bench_cases.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== diff_stats sweeps per backend"
for backend in cuda cupy triton torch; do
  python benchmarks/bench_diff_stats.py --device cuda --backend "$backend" \
    --sizes 1e6 1e7 1e8 2e8 --dtypes bf16 fp32 --reps 20 --json "$out/diff_stats_$backend.json" \
    2>&1 | tee "$out/diff_stats_$backend.md" || status=1
done
echo "== paramgeom diff on a synthetic 2 GB pair: plain read vs --device cuda (stats only, full)"
python -m paramgeom.cli synth "$out/pair" --size 2GB --shards 4 --quiet || status=1
python - "$out/pair" <<'PY' 2>&1 | tee "$out/read.txt"
import sys, time
from paramgeom.checkpoints.reader import open_checkpoint
t = time.perf_counter(); n = 0
for side in ("base", "tuned"):
    with open_checkpoint(f"{sys.argv[1]}/{side}") as c:
        for name, info in c.tensors.items():
            c.read(name); n += info.nbytes
dt = time.perf_counter() - t
print(f"plain read of every tensor: {dt:.2f} s, {n / dt / 1e9:.2f} GB/s")
PY
for args in "--no-spectra" "--no-angles" ""; do
  rm -rf "$out/diff"
  /usr/bin/time -f "wall %e s, peak RSS %M KB" python -m paramgeom.cli diff "$out/pair/base" \
    "$out/pair/tuned" --out "$out/diff" --device cuda $args 2>&1 | grep -v "━" \
    | tee -a "$out/diff.txt" || status=1
done
exit $status
