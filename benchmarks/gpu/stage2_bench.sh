#!/usr/bin/env bash
# Stage 2 of the GPU run (one command, a few minutes): `paramgeom bench --quick --device
# cuda` (every kernel on every CUDA backend against plain torch and the device copy
# bandwidth measured in the same run), the fused scan's sweep against that bandwidth, and
# the scan reading stored bytes (FP8 with block scales, fp32 rounded in the read) against
# the host path and copy_ on each CUDA backend (benchmarks/stored_read.py kernel).
# Writes $OUT/bench/bench.json, $OUT/diff_stats_<backend>.json,
# $OUT/stored_read_<backend>.json and $OUT/stage2.json.
# DRY_RUN=1: the same on the CPU at the smoke sizes (plumbing only).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/data/gpu}
mkdir -p "$out"
device=cuda; profile=--quick; sizes="1e7 1e8 2e8"; backends="cuda cupy triton torch"
stored_rows=4096; stored_backends="cuda cupy triton"
if [ "${DRY_RUN:-0}" = 1 ]; then
  device=cpu; profile=--smoke; sizes="1e5"; backends="cpu"; stored_rows=64; stored_backends="cpu"
fi
status=0
python -m paramgeom.cli bench $profile --device "$device" --out "$out/bench" --quiet || status=1
for backend in $backends; do
  python benchmarks/bench_diff_stats.py --device "$device" --backend "$backend" \
    --sizes $sizes --dtypes bf16 fp32 --reps 10 --json "$out/diff_stats_$backend.json" \
    > "$out/diff_stats_$backend.md" 2>&1 || status=1
  tail -6 "$out/diff_stats_$backend.md"
done
for backend in $stored_backends; do
  python benchmarks/stored_read.py kernel --device "$device" --backend "$backend" \
    --rows "$stored_rows" --json "$out/stored_read_$backend.json" || status=1
done
printf '{"stage": 2, "ok": %s}\n' "$([ $status -eq 0 ] && echo true || echo false)" > "$out/stage2.json"
exit $status
