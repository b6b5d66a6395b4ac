#!/usr/bin/env bash
# The GPU check: one call on a lent GPU machine (an H200: 15 minutes of device time in all, one call
# at most 10) that comes back with every answer, as a time-boxed plan whose steps run in order of
# value, each under its own limit, the whole under GPU_CHECK_LIMIT seconds (default 540):
#   1. environment: the GPU, the versions, the extension (the carried `make gpu-bundle` build when
#      it fits this torch and these sources, else built here for sm_90 on every core), Triton;
#   2. tests: the CUDA and Triton tests in parallel (pytest-xdist), CUDA-graph tests included;
#   3. memcheck, racecheck: compute-sanitizer over a chosen set of native CUDA tests (every
#      kernel variant family once, a tail, several launch tables, noise, sample_weights);
#   3b. ncu: Nsight Compute's counters of three kernels (instructions and DRAM bytes per element), the
#      static SASS report's estimate checked against them (scripts/ncu_calibration.py);
#   4. bench: the benchmark's GPU presets under a time budget of their own;
#   5. pack: OUT_DIR gets three files whatever happened before: summary.txt (every step's status,
#      time and limit, and the tail of each failed step's log), results.tar.gz (every log, the
#      JUnit XML, the benchmark's folder) and results.json (the benchmark's, or why there is none).
# A failing step does not stop the ones after it; a step past its limit is ended and reported.
#
#   scripts/gpu_check.sh OUT_DIR             # on the GPU machine (PYTHON=... to choose the Python)
#   scripts/gpu_check.sh --dry-run OUT_DIR   # the same plan on this CPU machine: the GPU steps
#                                            # collect their tests and report themselves skipped,
#                                            # the benchmark runs its quick CPU presets
# docs/benchmarks.md ("On a lent GPU") gives the device call and how to read what comes back.
set -uo pipefail

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
OUT=${1:?usage: scripts/gpu_check.sh [--dry-run] OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs" "$WORK/site"
export PYTHONUNBUFFERED=1 PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
TOTAL_LIMIT=${GPU_CHECK_LIMIT:-540}
PACK_RESERVE=15
BEGIN=$SECONDS
JOBS=$(nproc 2> /dev/null || echo 4)

# The GPU tests (every file with CUDA tests), and the sanitizers' chosen part of them.
# tests/test_triton_cuda_8bit.py (48 Triton compilations) is left out of the time box: run it apart.
GPU_TESTS=(tests/test_native_cuda.py tests/test_native_cuda_8bit.py tests/test_triton_cuda.py tests/test_cuda_graphs.py
           tests/test_noise_capturable.py
           tests/test_sample_weights_op.py tests/test_philox.py tests/test_step_lists.py tests/test_triton_ptx.py
           tests/test_bench_cuda.py)
SANITIZED=(tests/test_native_cuda.py tests/test_sample_weights_op.py)
SANITIZED_K="test_each_variant_with_grad_scale and float32 or test_each_variant_with_float32_state and pn_ams and \
bfloat16 or test_more_tensors_than_one_launch_table and pn_ams or test_misaligned_operands or \
test_noise_over_several_launch_tables and diag_fisher or test_cuda_op_draws_the_torch_draws_weights and centered-257 or \
test_each_variant_with_bfloat16_state and pn_ams and (f32_sr_state or bf16_sr_both)"
# The benchmark: every optimizer on native and Triton against torch's fused and foreach optimizers,
# a 124M-parameter preset and a many-small-tensors one, fp32 and bf16, then the noise section, then
# the state-precision section (unbudgeted: its eleven targets on gpt2-small take well under 40 s).
BENCH=(--preset gpt2-small,many-small --dtype fp32,bf16 --backends native,triton --no-sweeps --no-progress
       --budget 100 --noise-budget 25 --out "$WORK/bench")
if [[ $DRY_RUN -eq 1 ]]; then
    BENCH=(--device cpu --quick --optimizers AdaPNM,DemonAdam,AdamW --no-sweeps --no-progress
           --noise-params 20000 --budget 20 --noise-budget 10 --out "$WORK/bench")
else
    BENCH=(--device cuda "${BENCH[@]}")
fi

# step NAME LIMIT COMMAND...: COMMAND under min(LIMIT, the time left), its output in logs/NAME.log;
# one line per step in steps.txt: name, status, seconds, limit, the log's last line.
step() {
    local name=$1 limit=$2; shift 2
    local left=$((TOTAL_LIMIT - (SECONDS - BEGIN) - PACK_RESERVE))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        skip "$name" "no time left in the ${TOTAL_LIMIT} s plan"
        return 1
    fi
    echo "== $name (limit $limit s): $*" >&2
    local start=$SECONDS rc status
    timeout -k 10 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status="TIMED-OUT" ;;
        *) status="FAILED(exit $rc)" ;;
    esac
    local last
    last=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | cut -c1-150)
    printf '%-17s %-16s %4d s  limit %4d s  %s\n' "$name" "$status" $((SECONDS - start)) "$limit" "$last" \
        >> "$WORK/steps.txt"
    echo "   $status after $((SECONDS - start)) s" >&2
    return $rc
}

skip() {
    printf '%-17s %-16s %4d s  limit %4d s  %s\n' "$1" skipped 0 0 "$2" >> "$WORK/steps.txt"
    echo "== $1: skipped ($2)" >&2
}

# --- 1. environment --------------------------------------------------------------------------------
environment() {
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
        --format=csv || echo "nvidia-smi: not on this machine"
    "$PYTHON" - << 'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible")
try:
    import triton
    print("triton", triton.__version__)
except ImportError as exc:
    print("triton: not importable:", exc)
PY
    command -v compute-sanitizer || echo "compute-sanitizer: not on this machine"
    echo "sources: $(scripts/extension_hash.sh); commit: $(git rev-parse --short HEAD 2> /dev/null || echo unknown)"
}

# The carried bundle when it was built against this torch from these sources; otherwise a build here.
extension() {
    local torch_version sources
    torch_version=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])") || return 1
    sources=$(scripts/extension_hash.sh)
    if [[ -f gpu-bundle/build-info.txt ]]; then
        cat gpu-bundle/build-info.txt
        if grep -qx "torch $torch_version" gpu-bundle/build-info.txt && grep -qx "sources $sources" gpu-bundle/build-info.txt; then
            echo "the bundle fits torch $torch_version and sources $sources"
            if [[ $DRY_RUN -eq 0 ]]; then
                rm -f noisefuse/_C*.so && cp gpu-bundle/_C.abi3.so noisefuse/ || return 1
            fi
        else
            echo "the bundle does not fit torch $torch_version / sources $sources: building here"
            build_here || return 1
        fi
    else
        echo "no gpu-bundle/ (make gpu-bundle): building here"
        build_here || return 1
    fi
    for wheel in gpu-bundle/wheels/*.whl; do
        [[ -e $wheel ]] || continue
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$wheel" || return 1
        echo "installed $(basename "$wheel") for this run"
    done
    "$PYTHON" - "$DRY_RUN" << 'PY'
import sys, torch
import noisefuse._C as c
from noisefuse.backends import native, triton
device = torch.device("cpu" if sys.argv[1] == "1" else "cuda")
print("noisefuse._C:", c.__file__, "built against torch", c.torch_version)
print(f"native on {device}:", native.available(device), native.load_error() or "")
print(f"triton on {device}:", triton.available(device))
sys.exit(0 if native.available(device) else 1)
PY
}

build_here() {
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "(dry run: the build here is skipped; the existing noisefuse._C is checked instead)"
        return 0
    fi
    rm -f noisefuse/_C*.so
    MAX_JOBS=$JOBS TORCH_CUDA_ARCH_LIST=9.0 "$PYTHON" setup.py -q build_ext --inplace
}

export -f environment extension build_here
export DRY_RUN PYTHON WORK JOBS

step environment 30 bash -c environment
step extension 300 bash -c extension

# --- 2. the CUDA and Triton tests --------------------------------------------------------------------
if [[ $DRY_RUN -eq 1 ]]; then
    step tests-collect 120 "$PYTHON" -m pytest -q -p no:cacheprovider -n 2 --co "${GPU_TESTS[@]}"
    skip tests "dry run: no GPU (the collection above is the plumbing check)"
else
    step tests 160 "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider -n "$JOBS" --junitxml="$WORK/tests.xml" "${GPU_TESTS[@]}"
fi

# --- 3. compute-sanitizer ------------------------------------------------------------------------------
# PYTORCH_NO_CUDA_MEMORY_CACHING: each tensor its own allocation, so an access past a tensor's end
# leaves it (in the caching allocator's blocks it would land in another tensor, unseen).
for tool in memcheck racecheck; do
    if [[ $DRY_RUN -eq 1 ]]; then
        step "$tool-collect" 60 "$PYTHON" -m pytest -q -p no:cacheprovider --co "${SANITIZED[@]}" -k "$SANITIZED_K"
        skip "$tool" "dry run: no GPU"
    elif ! command -v compute-sanitizer > /dev/null; then
        skip "$tool" "compute-sanitizer is not on this machine"
    else
        step "$tool" 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 17 \
            --print-limit 30 "$PYTHON" -m pytest -q -p no:cacheprovider "${SANITIZED[@]}" -k "$SANITIZED_K"
    fi
done

# --- 3b. Nsight Compute: the static SASS report's estimate against the counters of three kernels -------
# (scripts/ncu_calibration.py): the third step's update kernel of each, on one 64 MB tensor.
NCU_KERNELS='regex:^(fused_step_kernel|blockwise_step_kernel)'
ncu_pass() {
    local config csvs=()
    for config in adamw_fp32 adapnm_amsgrad_fp32 adapnm_8bit; do
        if [[ $DRY_RUN -eq 1 ]]; then
            "$PYTHON" scripts/ncu_calibration.py run "$config" --device cpu || return 1
            continue
        fi
        ncu --clock-control none --kernel-name "$NCU_KERNELS" --launch-skip 2 --launch-count 1 \
            --metrics "$("$PYTHON" scripts/ncu_calibration.py metrics)" \
            --csv --page raw "$PYTHON" scripts/ncu_calibration.py run "$config" > "$WORK/ncu-$config.csv" || return 1
        csvs+=("$WORK/ncu-$config.csv")
    done
    [[ $DRY_RUN -eq 1 ]] || "$PYTHON" scripts/ncu_calibration.py table "${csvs[@]}"
}
export -f ncu_pass
export NCU_KERNELS
if [[ $DRY_RUN -eq 0 ]] && ! command -v ncu > /dev/null; then
    skip ncu "ncu is not on this machine"
else
    step ncu 60 bash -c ncu_pass
fi

# --- 4. the benchmark ---------------------------------------------------------------------------------
step bench 170 "$PYTHON" -m noisefuse.bench "${BENCH[@]}"

# --- 5. pack: three files, whatever happened ------------------------------------------------------------
FAILED=$(grep -c -E 'FAILED|TIMED-OUT' "$WORK/steps.txt")
{
    echo "noisefuse GPU check$([[ $DRY_RUN -eq 1 ]] && echo ' (dry run on the CPU)'): $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
        "$((SECONDS - BEGIN)) s of a ${TOTAL_LIMIT} s plan; $FAILED step(s) failed or timed out"
    echo "step              status             time         limit   last line of its log"
    cat "$WORK/steps.txt"
    echo
    grep -E '^(GPU|python|noisefuse._C|native|triton|sources)' "$WORK/logs/environment.log" \
        "$WORK/logs/extension.log" 2> /dev/null | sed 's/^[^:]*logs\///'
    while read -r name status _; do
        if [[ $status == FAILED* || $status == TIMED-OUT ]]; then
            echo
            echo "--- $name: the last 25 lines of logs/$name.log"
            tail -n 25 "$WORK/logs/$name.log"
        fi
    done < "$WORK/steps.txt"
    if [[ -f $WORK/bench/report.txt ]]; then
        echo
        echo "--- the benchmark's report (bench/report.txt)"
        cat "$WORK/bench/report.txt"
    fi
} > "$OUT/summary.txt"
cp "$OUT/summary.txt" "$WORK/summary.txt"
if [[ -f $WORK/bench/results.json ]]; then
    cp "$WORK/bench/results.json" "$OUT/results.json"
else
    printf '{"error": "the benchmark wrote no results.json: see summary.txt and logs/bench.log"}\n' > "$OUT/results.json"
fi
tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude=site .
echo "wrote $OUT/summary.txt, $OUT/results.tar.gz, $OUT/results.json" >&2
exit $((FAILED > 0))
