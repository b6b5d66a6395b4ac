"""The CUDA emulation as the tests use it: csrc/cuda's op code and kernels compiled for the host
through csrc/emulation's shim of CUDA's execution model, loaded as the test-only ops
``torch.ops.noisefuse_emulated.fused_step_`` and ``.sample_weights`` (noisefuse's schemas, CPU
tensors). Built on first use with ninja and cached under build/cuda-emulation (rebuilt when a
source or flag changes); never part of the package. docs/backends/native.md, "The CUDA emulation".

``NOISEFUSE_EMULATION_SANITIZER=address`` selects the AddressSanitizer build, which only a process
started with the sanitizer's runtime preloaded can load (``asan_environment``).

``python tests/cuda_emulation.py`` builds (and loads) the build its environment selects; the test
session starts both builds so in the background (tests/conftest.py), while the other tests run."""
from __future__ import annotations

import fcntl
import glob
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
SANITIZER_ENV = "NOISEFUSE_EMULATION_SANITIZER"

# The emulation's runtime and op registration, the CUDA sources it compiles, and the host code
# they call (input checks, shared with the real kernels).
SOURCES = sorted(glob.glob(str(CSRC / "emulation" / "*.cpp"))) + [
    str(CSRC / "cpu" / "fused_step_inputs.cpp"), str(CSRC / "cpu" / "sample_weights_inputs.cpp")]
INCLUDES = [str(CSRC / "include"), str(CSRC / "cuda"), str(CSRC / "emulation")]
# No fused multiply-add contraction and no type-based alias analysis: the kernels' vector loads
# reinterpret arrays as packs, as CUDA code does. Hidden symbols: the emulated kernels share their
# names with the CUDA build's host stubs in noisefuse._C.
FLAGS = ["-DNOISEFUSE_CUDA_EMULATION", "-ffp-contract=off", "-fno-strict-aliasing", "-fvisibility=hidden",
         "-fvisibility-inlines-hidden"]
# The sanitized build also checks every typed access for its type's alignment (UBSan's alignment
# check, fatal): a vector pack loaded from an address the hardware would fault on fails here too.
# -O1, as the sanitizer's documentation advises: most of -O2's speed, less build time.
ASAN_FLAGS = ["-O1", "-fsanitize=address,alignment", "-fno-sanitize-recover=alignment", "-fno-omit-frame-pointer"]

_ops = None


def sanitizer() -> str | None:
    value = os.environ.get(SANITIZER_ENV) or None
    if value not in (None, "address"):
        raise ValueError(f"{SANITIZER_ENV} must be 'address' or unset, not {value!r}")
    return value


def load():
    """Builds (when needed) and loads the emulated ops into this process; returns
    ``torch.ops.noisefuse_emulated``. The AddressSanitizer build when ``sanitizer()`` asks for it."""
    global _ops
    if _ops is not None:
        return _ops
    from torch.utils import cpp_extension

    asan = sanitizer() == "address"
    name = "noisefuse_emulated_asan" if asan else "noisefuse_emulated"
    build_dir = ROOT / "build" / "cuda-emulation" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # One build at a time per library, across processes (a background build may be running): a
    # process killed mid-build leaves cpp_extension's own lock file behind, which would block every
    # later build, so the holder of this lock removes it.
    with open(build_dir.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (build_dir / "lock").unlink(missing_ok=True)
        # The compilers must not inherit the sanitizer's preloaded runtime (this process keeps it).
        preload = os.environ.pop("LD_PRELOAD", None)
        try:
            cpp_extension.load(name=name, sources=SOURCES, extra_include_paths=INCLUDES,
                               extra_cflags=FLAGS + (ASAN_FLAGS if asan else ["-O2"]),
                               extra_ldflags=ASAN_FLAGS if asan else [], build_directory=str(build_dir),
                               is_python_module=False, with_cuda=False, verbose=False)
        finally:
            if preload is not None:
                os.environ["LD_PRELOAD"] = preload
    _register_fakes()
    _ops = torch.ops.noisefuse_emulated
    return _ops


def _register_fakes():
    # The emulated ops' FakeTensor kernels, as noisefuse/backends/native.py registers the real ones'.
    @torch.library.register_fake("noisefuse_emulated::fused_step_")
    def _fused_step_fake(*args, **kwargs):
        return None

    @torch.library.register_fake("noisefuse_emulated::sample_weights")
    def _sample_weights_fake(step, batch_size, seed, kind, sigma, prob):
        return torch.empty(batch_size, dtype=torch.float32, device=step.device)


def asan_environment() -> dict:
    """The environment of a child process that runs the AddressSanitizer build: the sanitizer's
    runtime preloaded (an uninstrumented Python must load it first), leaks not reported (CPython
    and torch keep allocations until exit), every error fatal."""
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    # The repository on the path: the child imports noisefuse from here, installed or not.
    path = os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, LD_PRELOAD=runtime, PYTHONPATH=path, **{SANITIZER_ENV: "address"})
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86"
    return env


def start_background_builds() -> list[subprocess.Popen]:
    """Both builds in child processes, their output in build/cuda-emulation/*.log. A later ``load()``
    waits for the child building the same library (cpp_extension's lock) and finds it built; a
    child that failed leaves the build to ``load()``, which reports the error."""
    log_dir = ROOT / "build" / "cuda-emulation"
    log_dir.mkdir(parents=True, exist_ok=True)
    envs = {"plain": {k: v for k, v in os.environ.items() if k != SANITIZER_ENV}}
    if python_can_run_asan():
        envs["asan"] = asan_environment()
    children = []
    for name, env in envs.items():
        with open(log_dir / f"background-{name}.log", "w") as log:
            children.append(subprocess.Popen([sys.executable, __file__], env=env, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=ROOT, start_new_session=True))
    return children


def python_can_run_asan() -> bool:
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return os.path.isabs(runtime) and os.path.exists(runtime) and sys.platform.startswith("linux")


if __name__ == "__main__":
    if sanitizer():
        sys.modules["triton"] = None  # as in the sanitized test run: Triton cannot load under ASan
    load()
