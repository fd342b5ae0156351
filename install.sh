#!/usr/bin/env bash
# Install moekernel and what it needs into the current Python environment.
#   ./install.sh        the package and the pipeline (Snakemake)
#   ./install.sh test   the same, plus the test tools
# torch: an installed torch is kept (GPU machines bring their CUDA build). Without one, a GPU machine gets PyPI's
# default build and a CPU-only machine torch 2.13.0, which this project's machines serve as a CPU build from their
# local wheel cache (elsewhere, install a CPU torch first). The pin lives here, not in the package metadata, so GPU
# users never have their torch replaced.
set -euo pipefail
cd "$(dirname "$0")"
pip() { python3 -m pip install --disable-pip-version-check -q "$@"; }
if ! python3 -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip torch
  else
    pip torch==2.13.0
  fi
fi
extras=pipeline
[ "${1:-}" = test ] && extras=pipeline,test
pip -e ".[$extras]"
python3 -c "import moekernel, torch, triton; print(f'moekernel {moekernel.__version__}: torch {torch.__version__}, triton {triton.__version__}')"
