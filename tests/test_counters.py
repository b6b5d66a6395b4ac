"""The 0-d counters (``step``, Demon's ``beta1_prod``) are float64 on every backend, exact for any
step count and Demon product (docs/kernel-contract.md, "Arguments"), and survive checkpoints exactly,
whatever the params' dtype."""
from __future__ import annotations

import io
import math

import pytest
import torch

import noisefuse as nf
from cases import make_grads, make_params, on_cpu

BACKENDS = ["reference", "foreach", "native", "triton"]


def demon_adam(params, backend, **kw):
    return nf.DemonAdam(params, lr=1e-3, betas=(0.95, 0.99), total_steps=40, weight_decay=0.01, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_demon_product_is_the_exact_float64_product(backend, dtype, monkeypatch):
    """After 25 steps the stored product equals Demon's product of betas computed in Python floats
    (a float32 product was 3e-8 away, relative): float64 math, one rounding per step, as the host's."""
    on_cpu(backend, monkeypatch)
    ps = make_params((5, 70), dtype=dtype)
    opt = demon_adam(ps, backend)
    for step in range(25):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
    demon = nf.Demon(40)
    product = 1.0
    for t in range(1, 26):
        product *= demon.beta(0.95, t)  # the kernels' order: stored product times this step's beta
    for p in ps:
        state = opt.state[p]
        assert state["step"].dtype == state["beta1_prod"].dtype == torch.float64
        assert state["step"].item() == 25
        if backend == "triton":  # its float64 Demon beta is formed in another order: an ulp or two
            assert math.isclose(state["beta1_prod"].item(), product, rel_tol=1e-14)
        else:
            assert state["beta1_prod"].item() == product
        assert math.isclose(product, demon.beta_product(0.95, 25), rel_tol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_counts_past_float32_range(backend, monkeypatch):
    """A float32 counter stops at 2^24 (2^24 + 1 rounds back); the float64 one counts on."""
    on_cpu(backend, monkeypatch)
    ps = make_params((3,))
    opt = nf.AdaPNM(ps, lr=1e-3, backend=backend)
    ps[0].grad = torch.ones(3)
    opt.step()
    opt.state[ps[0]]["step"].fill_(2.0**24)
    opt.step()
    opt.step()
    assert opt.state[ps[0]]["step"].item() == 2.0**24 + 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_checkpoint_keeps_the_counters_exact_for_low_precision_params(dtype):
    """torch's loader casts every state tensor but ``step`` to its param's dtype; the Demon product
    of bfloat16 params would lose 16 bits. It is restored from the checkpoint as float64."""
    ps = make_params((7,), dtype=dtype)
    opt = demon_adam(ps, "reference")
    for step in range(5):
        ps[0].grad = make_grads(ps, step)[0]
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = demon_adam([p.detach().clone().requires_grad_() for p in ps], "reference")
    fresh.load_state_dict(saved)
    for key in ("step", "beta1_prod"):
        got = fresh.state[fresh.param_groups[0]["params"][0]][key]
        assert got.dtype == torch.float64 and got.item() == opt.state[ps[0]][key].item(), key


def test_float32_counters_of_an_older_checkpoint_load_exactly():
    """A checkpoint from before the counters were float64 (and the official code's int step) loads:
    the values are converted exactly, and the next step continues as if they had been float64."""
    ps = make_params((9,))
    opt = demon_adam(ps, "reference")
    for step in range(4):
        ps[0].grad = make_grads(ps, step)[0]
        opt.step()
    saved = opt.state_dict()
    old = {"state": {0: dict(saved["state"][0])}, "param_groups": saved["param_groups"]}
    old["state"][0]["step"] = old["state"][0]["step"].float()
    old["state"][0]["beta1_prod"] = old["state"][0]["beta1_prod"].float()
    resumed = demon_adam([p.detach().clone().requires_grad_() for p in ps], "reference")
    resumed.load_state_dict(old)
    rp = resumed.param_groups[0]["params"][0]
    rp.grad = ps[0].grad = make_grads(ps, 4)[0]
    resumed.step()
    opt.step()
    state = resumed.state[rp]
    assert state["step"].dtype == torch.float64 and state["step"].item() == 5
    assert state["beta1_prod"].dtype == torch.float64
    # The float32 product differs from the exact one by its rounding only.
    assert math.isclose(state["beta1_prod"].item(), opt.state[ps[0]]["beta1_prod"].item(), rel_tol=1e-7)
