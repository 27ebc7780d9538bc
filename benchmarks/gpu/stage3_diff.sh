#!/usr/bin/env bash
# Stage 3 of the GPU run (one command, a few minutes): `paramgeom diff --device cuda` of a
# synthesised multi-GB pair (SIZE, default 2GB per checkpoint) against a plain read of the
# same tensors, stats only and with spectra. Wall time and peak RSS by
# benchmarks/gpu/timed.py (no GNU time needed). Writes $OUT/stage3.json and per-run JSON.
# DRY_RUN=1: a 50MB pair on the CPU (plumbing only).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/data/gpu}
mkdir -p "$out"
device=cuda; size=${SIZE:-2GB}
if [ "${DRY_RUN:-0}" = 1 ]; then device=cpu; size=50MB; fi
pair=${PAIR:-/tmp/paramgeom_pair_$size}
status=0
[ -d "$pair/tuned" ] || python -m paramgeom.cli synth "$pair" --size "$size" --shards 4 --quiet || exit 1
python - "$pair" "$out/read.json" <<'PY'
import json, sys, time
from paramgeom.checkpoints.reader import open_checkpoint
t = time.perf_counter(); n = 0
for side in ("base", "tuned"):
    with open_checkpoint(f"{sys.argv[1]}/{side}") as c:
        for name, info in c.tensors.items():
            c.read(name); n += info.nbytes
dt = time.perf_counter() - t
json.dump({"bytes": n, "seconds": dt, "gbps": n / dt / 1e9}, open(sys.argv[2], "w"))
print(f"plain read of every tensor: {dt:.2f} s, {n / dt / 1e9:.2f} GB/s")
PY
i=0
for args in "--no-spectra" "--no-angles" ""; do
  i=$((i + 1)); rm -rf "$out/diff$i"
  # shellcheck disable=SC2086
  python benchmarks/gpu/timed.py "$out/diff$i.json" -- python -m paramgeom.cli diff \
    "$pair/base" "$pair/tuned" --out "$out/diff$i" --device "$device" $args || status=1
done
printf '{"stage": 3, "ok": %s, "pair": "%s"}\n' "$([ $status -eq 0 ] && echo true || echo false)" "$pair" > "$out/stage3.json"
exit $status
