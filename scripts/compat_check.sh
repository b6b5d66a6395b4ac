#!/usr/bin/env bash
# The test suite on the versions of the GPU machine (torch 2.11, Triton 3.6), run on a CPU machine:
# its own virtual environment (created once), the extension built from a copy of the working tree
# with `setup.py build_ext` and that environment's own setuptools (as scripts/gpu_check.sh falls
# back to), then every test. Not part of `make test`: it downloads torch 2.11 (~3 GB) from PyPI.
# Run it after changing code that calls torch or Triton APIs (`make compat`).
#   COMPAT_TORCH=2.11.0 COMPAT_TRITON=3.6.0 COMPAT_VENV=.venv-compat  (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${COMPAT_VENV:-.venv-compat}")
TORCH=${COMPAT_TORCH:-2.11.0}
TRITON=${COMPAT_TRITON:-3.6.0}
SYSPY=${SYSPY:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$SYSPY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==$TORCH" "triton==$TRITON" numpy ninja pytest pytest-timeout \
    pytorch_optimizer matplotlib tqdm pytest-benchmark scikit-learn
"$VENV/bin/python" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"

# A copy of the tracked and new files, so the build leaves the main environment's in-place library alone.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK"
cd "$WORK"
MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py -q build_ext --inplace
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests
