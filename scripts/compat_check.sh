#!/usr/bin/env bash
# The test suite on the versions of the GPU machine (torch 2.11, Triton 3.6), run on a CPU machine:
# their environment (scripts/compat_env.sh), the extension built from a copy of the working tree
# with `setup.py build_ext` and that environment's own setuptools (as scripts/gpu_check.sh builds
# when no bundle fits), then every test. Not part of `make test`: it downloads torch 2.11 (~3 GB)
# from PyPI. Run it after changing code that calls torch or Triton APIs (`make compat`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/compat_env.sh)

# A copy of the tracked and new files, so the build leaves the main environment's in-place library alone.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK"
cd "$WORK"
MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace
"$PY" -m pytest -q -p no:cacheprovider tests
