#!/usr/bin/env bash
# The GPU run, in stages that each fit one device command (well under 10 minutes; a lent
# GPU gives 15 minutes in all). Run them one command each, in order:
#   OUT=$OUT bash benchmarks/gpu_bench.sh 1   # build, backends usable, GPU tests, the rest
#   OUT=$OUT bash benchmarks/gpu_bench.sh 2   # paramgeom bench --quick --device cuda, scan sweep
#   OUT=$OUT bash benchmarks/gpu_bench.sh 3   # paramgeom diff --device cuda of a 2GB pair
# Each writes $OUT/stage<N>.json (and its logs) and exits non-zero on failure. With no
# argument it runs all three in one go (a machine without a per-command limit).
# DRY_RUN=1 runs the CPU-side plumbing of each stage on a machine without a GPU.
# The GPU image has no network: stage 1 builds with the packages already installed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)/gpu"
case "${1:-all}" in
  1) exec bash "$here/stage1_build_test.sh" ;;
  2) exec bash "$here/stage2_bench.sh" ;;
  3) exec bash "$here/stage3_diff.sh" ;;
  all) bash "$here/stage1_build_test.sh" && bash "$here/stage2_bench.sh" && bash "$here/stage3_diff.sh" ;;
  *) echo "usage: bash benchmarks/gpu_bench.sh [1|2|3]" >&2; exit 2 ;;
esac
