#!/usr/bin/env bash
# Issue 22, item 5 and the acceptance on a many-core machine, as ONE prepared device call (see README,
# "Performance"). Here first: `bash benchmarks/device/fetch_wheels.sh`; then the device tool's
# run(command="bash benchmarks/device/gpu_check.sh", carry=[".whl"], timeout_s=600).
# Stage limits (160 + 240 + 150 s) keep it inside one call; each stage's log comes back even if a later one stops.
# Writes under $OUT: env.txt, gpu.log + gpu.json (bench_gpu.py: training/inference images/s in fp32 and bf16,
# the share of the card's peak, the store build's images/s on every core), mixed_1024.log and mixed_512.log
# (bench_preprocess.py --archive mixed: the first pass against the original path in the same run, on every core).
# A dry run on a CPU machine, with its own venv instead of the wheels:
#   WHEELS= PY=.venv/bin/python DEVICE=cpu SIZES=64 N=8 STORE=4 bash benchmarks/device/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cacxr-device-check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-512 1024}
N=${N:-48}          # mixed-archive images at S = 1024 (a quarter per syntax; S = 512 gets 2/3 of them)
STORE=${STORE:-32}  # bench_gpu.py's store-build images
WHEELS=${WHEELS-.whl}  # empty: install nothing
mkdir -p "$OUT"
if [ -n "$WHEELS" ]; then
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "no wheels in $WHEELS: run benchmarks/device/fetch_wheels.sh" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "installing $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$PWD/src:/tmp/site"
else
  export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1
{
  date -u; nproc; free -g | head -2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PY" -c 'import sys, torch, numpy, pydicom, PIL; print(sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available(), "numpy", numpy.__version__, "pydicom", pydicom.__version__, "Pillow", PIL.__version__)'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
# shellcheck disable=SC2086  # SIZES is a list
timeout 160 "$PY" benchmarks/bench_gpu.py --device "$DEVICE" --sizes $SIZES --store "$STORE" --json "$OUT/gpu.json" \
  2>&1 | tee "$OUT/gpu.log" || status=1
for stage in "1024 $N 240" "512 $((N * 2 / 3)) 150"; do
  read -r size n limit <<<"$stage"
  # exit 1 only says a target line was missed; the figures are what counts
  timeout "$limit" "$PY" benchmarks/bench_preprocess.py --archive mixed --n "$n" --image-size "$size" \
    2>&1 | tee "$OUT/mixed_$size.log"
  [ "${PIPESTATUS[0]}" -le 1 ] || status=1
done
echo "gpu_check: done (status $status); files in $OUT"
exit $status
