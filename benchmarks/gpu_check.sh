#!/usr/bin/env bash
# One command for a lent GPU machine (torch + CUDA preinstalled, nothing downloadable):
#   bash benchmarks/gpu_check.sh OUT_DIR
# 1. installs the carried wheels of our library versions (.whl/, see the README's GPU section)
#    into .site (no network), 2. runs the CUDA test module, 3. runs the 1B-config decode table
#    at n=32 (graph path, eager engine, compiled single-model baseline), then n=1, one
#    weights, the per-step profile and the 8B config as time allows. Everything is written
#    (and tee'd) under OUT_DIR, so a timeout still returns what was done. The CUDA tests and
#    the 1B n=32 table are bounded by 210 s + 200 s (estimated, not yet timed on a GPU);
#    everything by about 15 minutes, so give the device call its 600 s and expect the later
#    parts to be cut.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
log="$out/gpu_check.log"
{
  echo "== $(date -u) $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl || exit 1
  fi
  export PYTHONPATH="$PWD/.site:$PWD" PYTHONUNBUFFERED=1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$log"
export PYTHONPATH="$PWD/.site:$PWD" PYTHONUNBUFFERED=1

echo "== CUDA tests" | tee -a "$log"
timeout 210 python3 -m pytest tests/cuda -q -p no:cacheprovider -o addopts="" \
  -W ignore::pytest.PytestConfigWarning --junitxml="$out/cuda_tests.xml" 2>&1 | tee -a "$log"

bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2
  shift 2
  echo "== bench $name" | tee -a "$log"
  timeout "$limit" python3 benchmarks/bench_decode.py --out "$out/$name.json" "$@" 2>&1 | tee -a "$log"
}
bench llama1b_n32 200 --arch llama-1b --n 32 --roofline \
  --variants aligned_generate_static_compiled,baco_two_models_graph,baco_two_models,aligned_generate
bench llama1b_n1 60 --arch llama-1b --n 1 --prompts 1 \
  --variants aligned_generate_static_compiled,baco_two_models_graph
bench llama1b_n32_one_weights 90 --arch llama-1b --n 32 \
  --variants baco_one_weights,baco_one_weights_graph
echo "== profile llama-1b n=32 (launches, syncs, kernel vs wall per step)" | tee -a "$log"
timeout 90 python3 benchmarks/profile_step.py --arch llama-1b --n 32 \
  --out "$out/profile_step_llama1b_n32.json" 2>&1 | tee -a "$log"
bench llama8b_n32 150 --arch llama-8b --n 32 --roofline \
  --variants aligned_generate_static_compiled,baco_two_models_graph
echo "== done $(date -u)" | tee -a "$log"
