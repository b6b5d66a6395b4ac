#!/usr/bin/env bash
# One command for a GPU machine (torch preinstalled, no network): build the extension, run the full
# test suite including the CUDA tests, the kernel benchmarks and `python -m noisefuse.bench` on the
# GPU presets, and write every output into the folder given as $1.
#
#   scripts/gpu_check.sh OUT_DIR            # PYTHON=/path/to/python to choose the interpreter
#
# It goes on after a failing step (so one broken test does not cost the benchmark run) and exits
# non-zero if any step failed; OUT_DIR/summary.txt lists each step's exit status and log.
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
FAILED=0
: > "$OUT/summary.txt"

# step NAME COMMAND...: run COMMAND with its output in OUT/NAME.log, record its exit status.
step() {
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s (log: $name.log)" | tee -a "$OUT/summary.txt"
    if [[ $rc -ne 0 ]]; then FAILED=1; tail -n 20 "$OUT/$name.log"; fi
    return $rc
}

has_module() { "$PYTHON" -c "import $1" > /dev/null 2>&1; }

# 1. What this machine is.
step environment bash -c "nvidia-smi || true; '$PYTHON' -c 'import sys, torch; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); \
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no GPU\")'; \
'$PYTHON' -m pip list 2>/dev/null | grep -i -E 'torch|triton|pytest|tqdm|matplotlib|optimizer|numpy'"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $PYTHON: stopping" | tee -a "$OUT/summary.txt"
    exit 1
fi

# 2. Build the extension with its CUDA kernels (offline: no index, no build isolation).
build() {
    MAX_JOBS=${MAX_JOBS:-8} "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -e . \
        || MAX_JOBS=${MAX_JOBS:-8} "$PYTHON" setup.py build_ext --inplace
}
step build build
step extension_check "$PYTHON" -c "import torch; from noisefuse.backends import native, triton; \
d = torch.device('cuda'); print('native on cuda:', native.available(d), native.load_error()); \
print('triton on cuda:', triton.available(d))"

# 3. The whole test suite, GPU tests included (they skip themselves only without a GPU).
if has_module pytest; then
    step tests "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" tests
else
    echo "pytest is not installed: tests skipped" | tee -a "$OUT/summary.txt"; FAILED=1
fi

# 4. Kernel benchmarks (pytest-benchmark) on the GPU.
if has_module pytest_benchmark; then
    step kernel_benchmarks "$PYTHON" -m pytest -q -p no:cacheprovider benchmarks/ --kernel-devices cuda \
        --benchmark-json="$OUT/kernels.json" --benchmark-columns=median,iqr,rounds
else
    echo "pytest-benchmark is not installed: kernel benchmarks skipped" | tee -a "$OUT/summary.txt"
fi

# 5. The main benchmark on the GPU presets (fp32 and bf16), outputs in OUT/bench.
step bench "$PYTHON" -m noisefuse.bench --device cuda --out "$OUT/bench"
cp "$OUT/bench.log" "$OUT/bench/terminal.txt" 2>/dev/null

echo "== done: $( [[ $FAILED -eq 0 ]] && echo 'all steps passed' || echo 'some steps FAILED' ) ($OUT)" | tee -a "$OUT/summary.txt"
exit $FAILED
