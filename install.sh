#!/usr/bin/env bash
# Install moekernel and what it needs into the current Python environment.
#   ./install.sh        the package and the pipeline (Snakemake)
#   ./install.sh test   the same, plus the test tools
# torch: an installed torch is kept (GPU machines bring their CUDA build). Without one, a GPU machine gets PyPI's
# default build and a CPU-only machine torch 2.13.0, which this project's machines serve as a CPU build from their
# local wheel cache (elsewhere, install a CPU torch first). The pin lives here, not in the package metadata, so GPU
# users never have their torch replaced.
# Progress: one line per step, with the seconds since the start; in a terminal pip shows its own progress too, in a
# log (CI) it stays quiet.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf 'install.sh [%4ds] %s\n' "$SECONDS" "$*"; }
pip_quiet=(-q)
[ -t 1 ] && pip_quiet=()
pip() { python3 -m pip install --disable-pip-version-check "${pip_quiet[@]}" "$@"; }

if python3 -c "import torch" 2>/dev/null; then
  say "torch $(python3 -c 'import torch; print(torch.__version__)') is installed: kept"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "installing torch (PyPI's default CUDA build, a few GB: minutes)"
  pip torch
else
  say "installing torch 2.13.0 (CPU build)"
  pip torch==2.13.0
fi
extras=pipeline tools="Snakemake and its SLURM plugin"
[ "${1:-}" = test ] && extras=pipeline,test tools="$tools; pytest and pytest-xdist"
say "installing moekernel (editable), its dependencies (triton, transformers, pandas, pyarrow, duckdb, ...) and $tools: the longest step, minutes in a fresh environment"
pip -e ".[$extras]"
say "checking the install"
python3 -c "import moekernel, torch, triton; print(f'moekernel {moekernel.__version__}: torch {torch.__version__}, triton {triton.__version__}')"
say "done"
