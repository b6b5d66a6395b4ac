"""pytest-benchmark: multiplicative noise's weight vector for one step (B = 32), drawn by the native
``sample_weights`` op (one launch: the native and Triton backends) against the torch draw (~500
small ops: the reference and foreach backends), with the step read from a device tensor as an
optimizer with device counters does:

    .venv/bin/python -m pytest benchmarks/test_weight_draw.py --benchmark-columns=median,iqr,rounds
"""
from __future__ import annotations

import pytest
import torch

from noisefuse.backends import native
from noisefuse.noise import Multiplicative, sample_weights

pytest.importorskip("pytest_benchmark")

DRAWS = {"native-op": native.draw_weights, "torch": sample_weights}


@pytest.mark.parametrize("kind", ["gaussian", "gaussian_centered", "bernoulli"])
@pytest.mark.parametrize("draw", list(DRAWS))
def test_weight_draw(benchmark, sync, device, draw, kind):
    if draw == "native-op" and not native.available(torch.device(device)):
        pytest.skip(f"the native extension has no kernel for {device}")
    noise = Multiplicative(kind, small_batch=8)
    step = torch.tensor(7, device=device)
    benchmark.group = f"weight draw | {device} | {kind} | B=32"

    def call():
        DRAWS[draw](noise, 32, 1234, step, device)
        sync()

    benchmark(call)
