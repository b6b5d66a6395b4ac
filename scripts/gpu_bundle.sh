#!/usr/bin/env bash
# `make gpu-bundle`: what the GPU machine lacks, built here and laid into gpu-bundle/ (git-ignored),
# for scripts/gpu_check.sh to carry there (docs/benchmarks.md, "On a lent GPU"):
#   _C.abi3.so      the extension built against the GPU machine's torch 2.11 (scripts/compat_env.sh)
#                   with CUDA kernels for sm_90 only (the H200), abi3: it loads into that Python 3.12
#   build-info.txt  the torch it was built against and the digest of its sources
#                   (scripts/extension_hash.sh): gpu_check.sh uses the build only when both fit
#   wheels/         the Python packages the tests and benchmark need that the machine lacks
# A build takes about 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$(scripts/compat_env.sh)
BUNDLE=$ROOT/gpu-bundle
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$WORK"
(cd "$WORK" && rm -f noisefuse/_C*.so &&
    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --inplace &&
    "$PY" -c "import torch, noisefuse._C as c; from noisefuse.backends import native
assert native.available(torch.device('cpu')), native.load_error()
print('the bundle loads into torch', torch.__version__, '(built against', c.torch_version + ')')")
rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels"
# Without the host code's debug information (Python's CFLAGS carry -g): a third of the size.
strip --strip-debug -o "$BUNDLE/_C.abi3.so" "$WORK/noisefuse/_C.abi3.so"
{
    echo "torch $("$PY" -c "import torch; print(torch.__version__.split('+')[0])")"
    echo "sources $(cd "$WORK" && scripts/extension_hash.sh)"  # of the sources built, not of later edits
    echo "cuda archs 9.0"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- setup.py csrc || echo ' with uncommitted changes')"
} > "$BUNDLE/build-info.txt"
# The GPU machine has pytest, pytest-xdist, pytest-benchmark, matplotlib and tqdm (the device tool's
# KINDS.md), not pytorch_optimizer, the community baseline (pure Python; its needs, numpy and torch, are there).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform any -d "$BUNDLE/wheels" \
    "pytorch_optimizer==$("$PY" -c "import importlib.metadata as m; print(m.version('pytorch_optimizer'))")"
du -sh "$BUNDLE" "$BUNDLE"/* "$BUNDLE"/wheels/*
cat "$BUNDLE/build-info.txt"
