#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one call (device time is scarce):
#   build the CUDA extension, run the whole suite (GPU tests included), benchmark every op,
#   record the fastest backend per op for `auto`, and leave logs and results under $OUT.
# From the device tool:  run(command="bash benchmarks/gpu_session.sh")
# Then commit benchmarks/results/<device>.json, .png and tltorch_ext/auto_backends.json.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -1
} 2>&1 | tee "$OUT/versions.txt"
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20 | tee "$OUT/build.log"
python3 -c "import tltorch_ext; print(tltorch_ext.available_backends('cuda'))" | tee -a "$OUT/build.log"
python3 -m pytest -q -x -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
python3 -m pytest -q tests -m "not gpu" -p no:cacheprovider 2>&1 | tee "$OUT/cpu_tests.log" | tail -5
python3 -m tltorch_ext.cli bench --device cuda --update-auto --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -80
cp tltorch_ext/auto_backends.json "$OUT/" 2>/dev/null || true
