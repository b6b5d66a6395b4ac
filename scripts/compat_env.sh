#!/usr/bin/env bash
# Creates (once) and updates the environment of the GPU machine's versions, torch 2.11 and Triton 3.6,
# on any machine, and prints its Python. Used by `make compat` (scripts/compat_check.sh) and
# `make gpu-bundle` (scripts/gpu_bundle.sh); downloads torch 2.11 (~3 GB) from PyPI the first time.
#   COMPAT_TORCH=2.11.0 COMPAT_TRITON=3.6.0 COMPAT_VENV=.venv-compat  (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${COMPAT_VENV:-.venv-compat}")
TORCH=${COMPAT_TORCH:-2.11.0}
TRITON=${COMPAT_TRITON:-3.6.0}
if [ ! -x "$VENV/bin/python" ]; then
    "${SYSPY:-python3}" -m venv "$VENV" >&2
fi
"$VENV/bin/python" -m pip install -q "torch==$TORCH" "triton==$TRITON" numpy ninja pytest pytest-timeout pytest-xdist \
    pytorch_optimizer matplotlib tqdm pytest-benchmark scikit-learn "transformers>=4.46" "accelerate>=1.1" \
    "lightning>=2.4" "opacus>=1.5" >&2
"$VENV/bin/python" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)" >&2
echo "$VENV/bin/python"
