#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: the GL libraries headless MuJoCo needs (EGL, OSMesa as a
# fallback), then a virtual environment in .venv with collodreamer, its test tools, Ray and W&B.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
[ -e /usr/share/glvnd/egl_vendor.d/50_mesa.json ] || need_apt=1
ldconfig -p | grep -q 'libOSMesa\.so' || need_apt=1
if [ "$need_apt" = 1 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing GL libraries for headless rendering (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libosmesa6 >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and exactly: 2.13.0 is the CPU wheel on this kind of machine; a looser requirement
# would let pip pick a multi-GB CUDA build. A machine with CUDA may install its own torch >= 2.11.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
# Every other package at the exact version this project is tested on (constraints.txt; pyproject.toml
# gives the ranges it supports).
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,ray,wandb]"
echo "setup: done ($(.venv/bin/python -c 'import torch, mujoco; print("torch", torch.__version__, "mujoco", mujoco.__version__)'))"
