"""Fixtures of the kernel benchmarks: the devices to run on and the tensor lists one fused call
updates, built directly (no Optimizer in the way) so the timing is the backend's alone."""
from __future__ import annotations

import pytest
import torch

from noisefuse.backends.family import Family
from noisefuse.backends.step_tensors import StepTensors


def pytest_addoption(parser):
    parser.addoption("--kernel-devices", default=None,
                     help="comma-separated devices for the kernel benchmarks (default: cpu, plus cuda when present)")


def kernel_devices(config) -> list[str]:
    chosen = config.getoption("--kernel-devices")
    if chosen:
        return [d.strip() for d in chosen.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", kernel_devices(metafunc.config))


def make_step_tensors(family: Family, demon: bool, sizes, dtype, device) -> StepTensors:
    """Params and grads of ``sizes`` elements with zeroed state, as after construction of an
    optimizer; step counters on the params' device (where the native and Triton kernels read them)."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(n, std):
        return torch.empty(n, dtype=dtype, device=device).normal_(0.0, std, generator=gen)

    ts = StepTensors(params=[randn(n, 0.02) for n in sizes], grads=[randn(n, 1e-3) for n in sizes])

    def zeros():
        return [torch.zeros_like(p) for p in ts.params]

    ts.exp_avgs = zeros()
    if family.pn:
        ts.neg_exp_avgs = zeros()
    if family.second_moment:
        ts.exp_avg_sqs = zeros()
    if family.amsgrad:
        ts.max_exp_avg_sqs = zeros()
    ts.steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in sizes]
    if family.second_moment and demon:
        ts.beta1_prods = [torch.ones((), dtype=torch.float32, device=device) for _ in sizes]
    return ts


def synchronizer(device):
    """What makes a wall-clock sample complete: on CUDA the launches must have finished."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


@pytest.fixture
def sync(device):
    return synchronizer(device)
