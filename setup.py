"""Builds ``noisefuse._C``: CPU kernels always, CUDA kernels whenever a CUDA toolkit and a CUDA
build of torch are present (a GPU is not needed to compile them)."""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _set_cuda_home():
    # torch guesses CUDA_HOME as the parent of the `nvcc` on PATH; when that `nvcc` is a link or a
    # wrapper script (e.g. /usr/local/bin/nvcc), the guess holds no CUDA headers or libraries and
    # the build fails. Take the first candidate that really is a toolkit; an explicit CUDA_HOME wins.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


_set_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it at import)
from torch.utils import cpp_extension  # noqa: E402


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _want_cuda():
    if os.environ.get("NOISEFUSE_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


cxx_flags = ["-O3"]  # torch.utils.cpp_extension picks the -std its headers need
link_flags = []
if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
    # at::parallel_for is a header template whose OpenMP build (ATen/ParallelOpenMP.h) is a
    # `#pragma omp parallel`: compiled without -fopenmp it silently runs every CPU step on one thread.
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
include_dirs = [os.path.join(ROOT, "csrc", "include")]
sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")

if _want_cuda():
    # No GPU is needed to compile; without one torch cannot detect the arch, so name ours:
    # A100 (sm_80) and H100/H200 (sm_90), plus PTX for newer GPUs (`make gpu-bundle`: 9.0 alone).
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    ext = cpp_extension.CUDAExtension(
        "noisefuse._C",
        sources + _sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        py_limited_api=True,
        define_macros=[("NOISEFUSE_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "-lineinfo"],
        },
        extra_link_args=link_flags,
    )
else:
    ext = cpp_extension.CppExtension(
        "noisefuse._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags, py_limited_api=True,
    )

# Python's limited API (Py_LIMITED_API, which cpp_extension sets to torch's oldest Python, 3.10):
# `noisefuse/_C.abi3.so` loads into every CPython from there on, so one build serves this machine's
# Python and a GPU machine's (the module only registers ops with the dispatcher: no pybind11, no
# libtorch_python). The torch it is built against must still be the torch it is loaded into
# (noisefuse/backends/native.py checks).
# NOISEFUSE_SKIP_EXT=1: install the Python package alone (the Makefile's editable install, after which
# `setup.py build_ext --inplace --build-temp build/ext` builds the extension incrementally).
setup(
    ext_modules=[] if os.environ.get("NOISEFUSE_SKIP_EXT", "0") == "1" else [ext],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
