"""pytest-benchmark suite for the fused step of each backend, called directly (no Optimizer):

    .venv/bin/python -m pytest benchmarks/ --benchmark-columns=median,iqr,rounds
    .venv/bin/python -m pytest benchmarks/ --kernel-devices cuda --benchmark-json kernels.json

One benchmark per (family point, backend, dtype, tensor layout), grouped so each table compares the
backends and the plain copy of the same bytes. Each records the bytes the algorithm moves
(noisefuse.bench.bytes_model) and, after it ran, the achieved GB/s, in ``extra_info``.
Samples are wall-clock (pytest-benchmark's timer) around a call that ends with a device
synchronisation on CUDA, so they include launch overhead; ``make bench`` has CUDA-event timings.
"""
from __future__ import annotations

import pytest
import torch

from conftest import make_step_tensors

from noisefuse import backends
from noisefuse.backends.family import Family, Hyper
from noisefuse.bench import bytes_model

pytest.importorskip("pytest_benchmark")

# The four optimizers' points of the kernel family, with their default hyperparameters.
POINTS = {
    "pnm": (Family("pn"), Hyper(lr=1e-3, beta1=0.9, beta0=1.0), False, "pnm"),
    "adapnm": (Family("pn", second_moment=True, amsgrad=True),
               Hyper(lr=1e-3, beta1=0.9, beta2=0.999, beta0=1.0, eps=1e-8), False, "adapnm"),
    "demon_sgd": (Family("heavy_ball"), Hyper(lr=1e-3, beta1=0.9, decoupled=False, demon_total_steps=10**6),
                  True, "sgd_momentum"),
    "demon_adam": (Family("ema", second_moment=True),
                   Hyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=False, demon_total_steps=10**6),
                   True, "adam"),
}
# Tensor layouts with the same total: one big tensor (pure bandwidth), a model-like split, and
# thousands of small tensors (per-tensor overhead). Larger on GPUs, where 1M elements fit in L2.
TOTAL = {"cpu": 2**20, "cuda": 2**24}
LAYOUTS = {"1-tensor": 1, "64-tensors": 64, "4096-tensors": 4096}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BACKENDS = ("native", "triton", "foreach", "reference")


def _sizes(device, layout):
    total, k = TOTAL[torch.device(device).type], LAYOUTS[layout]
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _record(benchmark, n_bytes):
    benchmark.extra_info["bytes_per_call"] = n_bytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gbps_median"] = n_bytes / stats.stats.median / 1e9


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("point", list(POINTS))
def test_fused_step(benchmark, sync, device, point, backend, dtype, layout):
    dev = torch.device(device)
    module = backends.get(backend)
    if hasattr(module, "available") and not module.available(dev):
        pytest.skip(f"backend {backend!r} is not available on {dev.type}")
    family, hyper, demon, algorithm = POINTS[point]
    sizes = _sizes(device, layout)
    ts = make_step_tensors(family, demon, sizes, DTYPES[dtype], dev)

    def step():
        module.fused_step(family, hyper, ts)
        sync()

    benchmark.group = f"{point} {dtype} {layout} on {dev.type}"
    benchmark(step)
    assert all(s.item() > 0 for s in ts.steps), "the step counters must have advanced"
    _record(benchmark, bytes_model.step_bytes(algorithm, sum(sizes), DTYPES[dtype]))


@pytest.mark.parametrize("layout", ["1-tensor"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("point", list(POINTS))
def test_copy_of_same_bytes(benchmark, sync, device, point, dtype, layout):
    """The bandwidth reference of each group: ``dst.copy_(src)`` moving the step's bytes."""
    dev, dt = torch.device(device), DTYPES[dtype]
    n_bytes = bytes_model.step_bytes(POINTS[point][3], sum(_sizes(device, layout)), dt)
    src = torch.ones(bytes_model.copy_elements(n_bytes, dt), dtype=dt, device=dev)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)
        sync()

    benchmark.group = f"{point} {dtype} {layout} on {dev.type}"
    benchmark(copy)
    assert torch.equal(dst, src)
    _record(benchmark, n_bytes)
