#!/usr/bin/env bash
# Stage 1 of the GPU run (one command, well under 10 minutes): build, prove every CUDA
# backend usable, then the GPU test files (no -x: a failure must not hide the others);
# REST=1 also runs the rest of the suite (a few more minutes). Writes $OUT/stage1.json and
# the logs beside it.
# DRY_RUN=1: on a machine without a GPU, checks the plumbing (the usability check is then
# expected to fail, and says why) and runs only the GPU test files (they skip).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benchmarks/data/gpu}
mkdir -p "$out"
: > "$out/stage1.log"

if [ "${DRY_RUN:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
  echo "== build (pip install --no-build-isolation --no-deps .)"
  if ! pip install --no-build-isolation --no-deps . > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"
    echo '{"stage": 1, "ok": false, "failed": "build"}' > "$out/stage1.json"
    exit 1
  fi
fi

echo "== backends: _C_cuda must import; cuda, cupy and triton must all be usable"
python - "$out" <<'PY'
import json, sys
from paramgeom import backends
infos = {name: info for name, info in backends().items()}
need = ("cuda", "cupy", "triton")
missing = {n: infos[n].reason for n in need if not infos[n].available}
try:
    import paramgeom._C_cuda  # noqa: F401
    cuda_ext = "imports"
except ImportError as exc:
    cuda_ext = f"does not import: {exc}"
json.dump({"backends": {n: {"usable": i.available, "why": i.reason} for n, i in infos.items()},
           "_C_cuda": cuda_ext}, open(f"{sys.argv[1]}/backends.json", "w"), indent=1)
for n, why in missing.items():
    print(f"NOT USABLE: {n}: {why}")
print(f"paramgeom._C_cuda {cuda_ext}")
sys.exit(1 if missing or cuda_ext != "imports" else 0)
PY
usable=$?
if [ "$usable" -ne 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
  echo '{"stage": 1, "ok": false, "failed": "backends"}' > "$out/stage1.json"
  exit 1
fi

gpu_tests="tests/test_diff_stats_cuda.py tests/test_linalg_cuda.py tests/test_linalg_distributed.py tests/test_diff_stats_triton.py tests/test_diff_stats_scaled.py tests/test_diff_matmul.py tests/test_gram_update.py"
echo "== GPU test files"
python -m pytest -q -p no:cacheprovider $gpu_tests --junitxml "$out/tests_gpu.xml" 2>&1 \
  | tee "$out/tests_gpu.txt" | tail -5
gpu_rc=${PIPESTATUS[0]}
rest_rc=0
if [ "${REST:-0}" = 1 ]; then
  echo "== the rest of the suite"
  ignores=$(for f in $gpu_tests; do printf -- '--ignore=%s ' "$f"; done)
  # shellcheck disable=SC2086
  python -m pytest -q -p no:cacheprovider tests $ignores --junitxml "$out/tests_rest.xml" 2>&1 \
    | tee "$out/tests_rest.txt" | tail -5
  rest_rc=${PIPESTATUS[0]}
fi
python - "$out" "$gpu_rc" "$rest_rc" "$usable" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out, gpu_rc, rest_rc, usable = sys.argv[1], *map(int, sys.argv[2:])
summary = {"stage": 1, "backends_usable": usable == 0}
for part in ("gpu", "rest"):
    path = Path(out) / f"tests_{part}.xml"
    if path.exists():
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        summary[part] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
summary["ok"] = usable == 0 and gpu_rc == 0 and rest_rc == 0
json.dump(summary, open(f"{out}/stage1.json", "w"), indent=1)
print("stage 1:", json.dumps(summary))
PY
[ "$gpu_rc" -eq 0 ] && [ "$rest_rc" -eq 0 ] && { [ "$usable" -eq 0 ] || [ "${DRY_RUN:-0}" = 1 ]; }
