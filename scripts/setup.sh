#!/usr/bin/env bash
# Set up everything clq needs on a fresh Debian machine with Python 3.11 (root, package registries reachable):
#   - Debian package dataset-fashion-mnist (the offline default data),
#   - a virtual environment .venv with clq and its pinned dependencies (pyproject.toml),
#   - the ImageNet MobileNet-V1 weights into .cache/weights (scripts/fetch_weights.sh),
#   - g++, and clq's native depthwise kernel built with it (clq/model/native.py),
#   - with --dev, the test dependencies too and chromium (the test that opens the sweep report in a headless
#     browser); the test that compiles the exported C header uses the compiler above.
# Idempotent: re-running skips what is already in place (the venv is keyed by a hash of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "setup: installing Debian package dataset-fashion-mnist"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

if ! command -v g++ >/dev/null 2>&1; then
  echo "setup: installing Debian package g++ (clq's native depthwise kernel; tests compile the exported C header)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq g++ >/dev/null
fi

if [[ -n "$extras" ]] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Debian package chromium (a test opens the sweep report in headless Chromium)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# pip's exit status is the pipeline's (pipefail): a failed install stops the script; only grep's "no line
# left" status is ignored.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}

stamp=".venv/.clq-install-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-dev}"
if [[ ! -f "$stamp" ]]; then
  echo "setup: installing clq${extras} and its pinned dependencies into .venv (a few minutes the first time)"
  pip_install --upgrade "pip>=24"
  pip_install -e ".${extras}"
  # Fail here, not later, if the install broke.
  .venv/bin/python -c "import clq, jax, flax, optax, hydra, wandb${extras:+, pytest, hypothesis, torch}"
  touch "$stamp"
fi
# clq's native depthwise kernel (clq/model/native.py), built for this machine now rather than in the first run.
.venv/bin/python -c "from clq.model.native import build; build()"
# ImageNet MobileNet-V1 weights (model=mobilenet_v1_imagenet, the CORe50 paper experiment and the tests).
bash scripts/fetch_weights.sh
echo "setup: ready"
