#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call of under ~9 minutes (device time is scarce):
#   build the CUDA extension for this device's arch only, run every GPU test (collecting all
#   failures), benchmark every op (fp32 and bf16, ResNet-50 shapes, against cuDNN BatchNorm,
#   torch.bmm and torch.linalg baselines, GB/s against a measured copy bandwidth), and record the
#   measured order for `auto`. Each stage runs under its own time limit and the next runs whatever
#   happened; logs, results and stages.txt (one status line per stage) land in $OUT.
# From the device tool:  run(command="bash benchmarks/gpu_session.sh", timeout_s=580)
# Then commit $OUT/<gpu>.json and .png to benchmarks/results/ and $OUT/auto_backends.json to
# tltorch_ext/auto_backends.json.
#
# --dry-run rehearses every Python part on this CPU machine (no build, no GPU): the same stages
# with CPU stand-ins, so nothing but the GPU itself is new when the script runs there.
set -uo pipefail
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT=${OUT:-/tmp/gpu_out}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
: > "$OUT/stages.txt"
export PYTHONUNBUFFERED=1
# --update-auto writes here, not into a user cache that the machine loses.
export TLTORCH_EXT_CACHE="$OUT"

stage() {  # stage NAME SECONDS COMMAND...: run it with a limit, log it, record its status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="timed out after ${limit}s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc)"
  echo "$name: $status in $((SECONDS - start))s" | tee -a "$OUT/stages.txt"
  tail -25 "$OUT/$name.log"
}

stage versions 60 "$PYTHON" -c "
import platform, torch, triton
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'triton', triton.__version__)
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())
"

if [ $DRY_RUN -eq 1 ]; then
  stage build 60 "$PYTHON" -c "import tltorch_ext; print(tltorch_ext.available_backends('cpu'))"
  stage gpu_tests 120 "$PYTHON" -m pytest -q -m gpu tests -p no:cacheprovider --collect-only
  stage bench 300 "$PYTHON" -m tltorch_ext.cli bench --device cpu --quick --ops bss \
    --update-auto --out "$OUT" --quiet
else
  ARCH=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  stage build 300 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="$ARCH" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
  stage gpu_tests 150 "$PYTHON" -m pytest -q -m gpu tests -p no:cacheprovider -rfE \
    --junitxml="$OUT/gpu_tests.xml"
  stage bench 240 "$PYTHON" -m tltorch_ext.cli bench --device cuda --update-auto --out "$OUT"
fi
stage explain 60 "$PYTHON" -c "
import torch, tltorch_ext
device = 'cuda' if torch.cuda.is_available() else 'cpu'
for op in ('bss', 'fsp', 'nst', 'stoch_norm'):
    print(tltorch_ext.explain_backend(op, device))
"
cat "$OUT/stages.txt"
