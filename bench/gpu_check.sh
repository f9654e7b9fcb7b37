#!/usr/bin/env bash
# The GPU checks in one run, for a lent CUDA machine (see docs/performance.md, "GPU figures"). Each step is bounded and
# independent: one failing step does not hide the others. Writes into ${OUT:-gpu-out}/:
#   log.txt (every step's output), tiny.json, 7b.json, overhead_gpu.json, tiny.png, pytest.txt
# Run on the device:  bash bench/gpu_check.sh   (about 5 minutes on an H200)
# Packages missing on the machine can be carried as wheels in .whl/ (installed into /tmp/site first). On
# the lent H200 image (2026-11-30) these were missing or older, fetched here with `pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ... -d .whl`:
#   transformers==5.24.0 peft==0.21.2 soundfile==0.14.0 librosa==0.11.0 soxr==1.1.0 audioread==3.1.0
#   pooch==1.9.0 decorator==5.2.1 cffi==2.0.0 pycparser platformdirs==4.14.8 torchinfo==1.8.0
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || echo "wheel install failed"
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}

step() {  # step NAME SECONDS CMD...: run one bounded step, its output appended to log.txt
  local name=$1 limit=$2; shift 2
  echo "===== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt"
  echo "===== $name: rc=${PIPESTATUS[0]} in $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
}

step env 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "
import torch, transformers, peft, librosa, soundfile
print(\"python\", __import__(\"sys\").version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"transformers\", transformers.__version__, \"peft\", peft.__version__, \"librosa\", librosa.__version__)"'
step tiny 90 bin/trace samples/sample.wav --json "$OUT/tiny.json" --plot "$OUT/tiny.png"
step 7b 200 bin/trace samples/sample.wav --config samples/qwen2-audio-7b.json --json "$OUT/7b.json"
step gpu_strategies 150 python3 bench/gpu_strategies.py --repeats 5
step overhead 150 python3 bench/overhead.py --gpu-only --json "$OUT/overhead_gpu.json"
step cuda_tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
# the whole suite with CUDA present (the CLI then picks cuda + bf16): what a GPU user of the tests sees
PARALLEL=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist is on the H200 image
step pytest 150 bash -c "python3 -m pytest -q -p no:cacheprovider $PARALLEL > '$OUT/pytest.txt' 2>&1; rc=\$?; grep -E '^(FAILED|ERROR)|passed|failed' '$OUT/pytest.txt' | tail -25; exit \$rc"
