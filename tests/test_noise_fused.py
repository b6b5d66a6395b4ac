"""Noise behaviour both fused backends (native, Triton) must share with the reference: each
per-sample row is unscaled and negated before it is combined, and parameters in another layout are
handled (weighted sums in the kernel; per-element normals, indexed row-major, through foreach with
one warning). Triton runs under its interpreter on CPU tensors."""
import warnings

import pytest
import torch

from cases import CONFIGS, assert_same_state, make_params
from noise_cases import NOISES, SEED, noisy_run
from noisefuse import backends


@pytest.fixture(params=["native", "triton"])
def fused(request, monkeypatch):
    if request.param == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = backends.get(request.param)
    if not module.available(torch.device("cpu")):
        pytest.skip(f"{request.param} cannot run CPU tensors here")
    monkeypatch.setattr(module, "_warned_layout", False)  # each test sees its own warning
    return request.param


@pytest.mark.parametrize("noise", ["diag_fisher_centered", "mult_centered"])
def test_rows_are_unscaled_and_negated_each(noise, fused):
    # Rows scaled by -4 with grad_scale=4 and maximize: unscaling and negation apply to each row
    # before the Fisher diagonal or the weighted sum, which then equal those of the plain rows.
    params = make_params((3, 40))
    plain, _ = noisy_run("pnm", "reference", noise, params, steps=4)
    runs = {}
    for backend in ("reference", fused):
        qs = [p.detach().clone().requires_grad_() for p in params]
        opt = CONFIGS["pnm"](qs, backend=backend, noise=NOISES[noise], seed=SEED, maximize=True)
        opt.grad_scale, opt.found_inf = torch.tensor([4.0]), torch.tensor([0.0])
        for step in range(4):
            for i, q in enumerate(qs):
                gen = torch.Generator().manual_seed(step * 1009 + i)
                q.grad_sample = -4.0 * torch.randn((6, *q.shape), generator=gen, dtype=torch.float64).float()
            opt.step()
        runs[backend] = (qs, opt)
    assert_same_state(runs["reference"][1], runs[fused][1], runs["reference"][0], runs[fused][0], torch.float32)
    for a, b in zip(plain, runs[fused][0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("noise", ["mult_gaussian", "diag_fisher"])
def test_params_in_another_layout(noise, fused):
    # Transposed params, contiguous grad_sample: weighted sums are layout free (the rows are copied
    # into the param's layout); normals are indexed row-major, which the kernels do not walk here,
    # so that group is stepped by foreach with one warning.
    base = make_params((20, 24))
    params = [base[0].detach().view(4, 5).t(), base[1].detach().view(4, 6).t()]
    pa, oa = noisy_run("adapnm", "reference", noise, params, steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pb, ob = noisy_run("adapnm", fused, noise, params, steps=4)
    assert pb[0].stride() == (1, 5)
    assert len([w for w in caught if "foreach" in str(w.message)]) == (noise == "diag_fisher")
    assert_same_state(oa, ob, pa, pb, torch.float32)
