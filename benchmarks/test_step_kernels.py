"""pytest-benchmark suite for the fused step of each backend, called directly (no Optimizer):

    .venv/bin/python -m pytest benchmarks/ --benchmark-columns=median,iqr,rounds
    .venv/bin/python -m pytest benchmarks/ --kernel-devices cuda --benchmark-json kernels.json

One benchmark per (family point, backend, dtype, tensor layout), grouped so each table compares the
backends and the plain copy of the same bytes. Each records the bytes the algorithm moves
(noisefuse.bench.bytes_model) and, after it ran, the achieved GB/s, in ``extra_info``. The
64-tensor fp32 groups also hold the step with each gradient noise drawn inside it, on every backend
that says ``supports_noise``.
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
from noisefuse.noise import NoiseStep

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


NOISE_BATCH = 8  # grad_sample rows in the noisy cases (make bench's noise section uses 32)


def _noise_step(kind, device):
    if kind == "isotropic":
        return NoiseStep("isotropic", seed=1, std=1e-3)
    if kind == "diag_fisher":
        return NoiseStep("diag_fisher", seed=1, scale=(1 / 2 - 1 / NOISE_BATCH) ** 0.5)
    weights = torch.linspace(0.5, 1.5, NOISE_BATCH, dtype=torch.float32, device=device)
    return NoiseStep("multiplicative", seed=1, sample_weights=weights)


@pytest.mark.parametrize("kind", ["isotropic", "diag_fisher", "multiplicative"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("point", ["pnm", "adapnm"])
def test_fused_step_noisy(benchmark, sync, device, point, backend, kind):
    """The fused step with gradient noise drawn inside it (fp32, 64 tensors); grouped with the
    plain step of the same point and layout, whose bytes it moves (isotropic) or moves with the B
    grad_sample rows in place of g (diag_fisher, multiplicative)."""
    dev = torch.device(device)
    module = backends.get(backend)
    if getattr(module, "supports_noise", False) is not True:
        pytest.skip(f"backend {backend!r} does not draw noise")
    if hasattr(module, "available") and not module.available(dev):
        pytest.skip(f"backend {backend!r} is not available on {dev.type}")
    family, hyper, _, algorithm = POINTS[point]
    sizes = _sizes(device, "64-tensors")
    ts = make_step_tensors(family, False, sizes, torch.float32, dev)
    noise = _noise_step(kind, dev)
    ts.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    if noise.consumes_grad_sample:
        gen = torch.Generator(device=dev).manual_seed(1)
        ts.grad_samples = [torch.empty(NOISE_BATCH, n, device=dev).normal_(0.0, 1e-3, generator=gen) for n in sizes]
        ts.grads = []

    def step():
        module.fused_step(family, hyper, ts, noise=noise)
        sync()

    benchmark.group = f"{point} fp32 64-tensors on {dev.type}"
    benchmark(step)
    assert all(p.isfinite().all() for p in ts.params)
    _record(benchmark, bytes_model.noisy_step_bytes(algorithm, kind, sum(sizes), torch.float32, NOISE_BATCH))
