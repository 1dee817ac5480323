#!/usr/bin/env bash
# A throwaway environment for the peer benchmark (bench/bench_avalanche.py): the real Avalanche 0.6.0 and its
# PyTorch, kept apart from clq's .venv (Avalanche needs torchvision, which does not import beside the CPU
# torch 2.13 that clq's dev extra pins). Idempotent. Usage: bash bench/peer/setup_avalanche.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-bench/.venv-avalanche}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp="$venv/.clq-peer-avalanche-0.6.0"
if [[ -f "$stamp" ]]; then echo "setup_avalanche: $venv ready"; exit 0; fi
[[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
pip() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
pip --upgrade "pip>=24"
# torch 2.14.1 + torchvision 0.29.1 is the pair that imports together on x86_64 (torchvision from PyPI fails to
# import beside torch 2.13); avalanche-lib pins neither.
pip "torch==2.14.1" "torchvision==0.29.1" "avalanche-lib==0.6.0" "numpy<3"
"$venv/bin/python" -c "import torch, torchvision, avalanche, pytorchcv; print('setup_avalanche: torch', torch.__version__, 'avalanche', avalanche.__version__)"
touch "$stamp"
