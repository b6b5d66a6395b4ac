"""Proof that the CUDA emulation's tests catch the bugs they are there for: each mutant below plants
one bug in a scratch copy of the CUDA sources (never in this tree), rebuilds the emulation there and
runs tests/test_cuda_emulated.py; every mutant must make it fail. A mutant that survives is
reported and the script exits 1. Takes a few minutes per mutant (two builds of the emulation for the
out-of-bounds one); not part of `make test`.

    .venv/bin/python scripts/emulation_mutants.py [name ...]

docs/backends/native.md ("The CUDA emulation") records the last run."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "csrc/cuda/fused_step_kernels.cuh"
TABLES = "csrc/cuda/multi_tensor_apply.cuh"

# name: (file, text, replacement, what it plants, the tests to run: -k expression)
MUTANTS = {
    "tail_off_by_one": (
        KERNELS, "if (threadIdx.x < n - full) {", "if (threadIdx.x + 1 < n - full) {",
        "the last element of a tensor whose size is not a multiple of kIlp is never updated", "not memory"),
    "chunk_start": (
        KERNELS, "static_cast<int64_t>(blockIdx.x - table.first_block[ti]) * kChunkSize",
        "static_cast<int64_t>(blockIdx.x) * kChunkSize",
        "a block's chunk starts at its grid index instead of its index within its tensor", "not memory"),
    "missing_barrier": (
        KERNELS, "  __syncthreads();\n  const int ti = tensor_s;", "  const int ti = tensor_s;",
        "the threads read thread 0's coefficients from shared memory without waiting for them", "not memory"),
    "table_splits_late": (
        TABLES, "if (table.num_tensors == Table::kMaxTensors ||", "if (table.num_tensors == Table::kMaxTensors + 1 ||",
        "a table takes one tensor more than it holds before it is launched", "not memory"),
    "read_past_the_end": (
        KERNELS, "  for (int j = 0; j < kIlp; ++j) {\n    const int i = base + j * stride;\n    if (i < n) {\n"
                 "      r.p[j] = static_cast<math_t>(x.p[i]);",
        "  for (int j = 0; j < kIlp; ++j) {\n    const int i = base + j * stride;\n    if (i <= n) {\n"
        "      r.p[j] = static_cast<math_t>(x.p[i]);",
        "the strided path loads one element past the chunk (past the tensor's end in its last chunk); the "
        "extra lane is never stored, so only the bounds check can see it", "memory"),
    "vector_load_misaligned": (
        KERNELS, "return reinterpret_cast<uintptr_t>(ptr) % (sizeof(scalar_t) * kIlp) == 0;", "return true;",
        "every tensor takes the vector path, misaligned views too (x86 would load them; the GPU faults)", "memory"),
}


def run_mutant(name: str, scratch: Path, selection: str | None = None) -> tuple[bool, str]:
    path, text, replacement, _, default_selection = MUTANTS[name]
    selection = selection or default_selection
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(ROOT / "csrc", scratch / "csrc")
    shutil.copytree(ROOT / "tests", scratch / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    source = scratch / path
    original = source.read_text()
    if original.count(text) != 1:
        raise SystemExit(f"{name}: the text to mutate is not in {path} exactly once; update this script")
    source.write_text(original.replace(text, replacement))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_cuda_emulated.py",
           "-k", selection]
    done = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    verdict = next((line for line in reversed(lines) if "passed" in line or "failed" in line or "error" in line),
                   lines[-1] if lines else "")
    return done.returncode != 0, f"exit {done.returncode}: {verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"mutants to run (default: all of {', '.join(MUTANTS)})")
    parser.add_argument("-k", dest="selection", help="the tests to run instead of each mutant's own (pytest -k)")
    args = parser.parse_args()
    names = args.names or list(MUTANTS)
    unknown = sorted(set(names) - set(MUTANTS))
    if unknown:
        parser.error(f"unknown mutants: {unknown}")
    survivors = []
    with tempfile.TemporaryDirectory(prefix="noisefuse-mutant-") as tmp:
        for name in names:
            started = time.monotonic()
            caught, verdict = run_mutant(name, Path(tmp) / name, args.selection)
            print(f"{name}: {'caught' if caught else 'SURVIVED'} in {time.monotonic() - started:.0f} s "
                  f"({MUTANTS[name][3]}); {verdict}", flush=True)
            if not caught:
                survivors.append(name)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
