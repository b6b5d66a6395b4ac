"""The optimizers, their constructor inputs and the helpers of the generic torch.optim checks
(tests/test_torch_optim_suite.py, the numbers; tests/test_torch_optim_suite_api.py, the API),
with ``OPTIM_INPUTS`` in the role of torch's ``optim_inputs_func``."""
from __future__ import annotations

import zlib

import pytest
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau, StepLR

import noisefuse as nf
from cases import ALL_BACKENDS, TOLERANCES, make_grads, on_cpu

# optim_inputs_func: each optimizer's constructor kwargs, from its plainest to its richest point.
OPTIM_INPUTS = {
    "PNM": (nf.PNM, [
        dict(lr=0.05),
        dict(lr=0.05, betas=(0.8, 0.5), weight_decay=0.1, decoupled=False),
        dict(lr=0.05, weight_decay=0.05, maximize=True, demon=nf.Demon(20, delay=0.1)),
    ]),
    "AdaPNM": (nf.AdaPNM, [
        dict(lr=0.05),
        dict(lr=0.05, weight_decay=0.1, amsgrad=False, betas=(0.8, 0.99, 0.5)),
        dict(lr=0.05, weight_decay=0.1, decoupled=False, maximize=True, demon=15, max_grad_norm=1.0),
    ]),
    "DemonSGD": (nf.DemonSGD, [
        dict(lr=0.01, total_steps=20),
        dict(lr=0.01, momentum=0.8, total_steps=20, nesterov=True, weight_decay=0.1, delay=0.2),
        dict(lr=0.01, total_steps=30, weight_decay=0.1, decoupled=True, maximize=True),
    ]),
    "DemonAdam": (nf.DemonAdam, [
        dict(lr=0.05, total_steps=20),
        dict(lr=0.05, betas=(0.95, 0.99), total_steps=25, weight_decay=0.1, decoupled=True, amsgrad=True),
        dict(lr=0.05, total_steps=20, weight_decay=0.1, maximize=True, delay=0.3, eps=1e-3),
    ]),
}
NAMES = sorted(OPTIM_INPUTS)
F32 = TOLERANCES[torch.float32]



@pytest.fixture(params=ALL_BACKENDS)
def backend(request, monkeypatch):
    return on_cpu(request.param, monkeypatch)


def inputs_for(name, backend, request):
    """Every input of ``name``; for Triton one, chosen by the test's name (see the module docstring)."""
    inputs = OPTIM_INPUTS[name][1]
    if backend != "triton":
        return inputs
    return [inputs[zlib.crc32(request.node.originalname.encode()) % len(inputs)]]


def make(name, params, backend, **kwargs):
    return OPTIM_INPUTS[name][0](params, backend=backend, seed=3, **kwargs)


def clones(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(params, step):
    for p, g in zip(params, make_grads(params, step)):
        p.grad = g


def steps(opt, params, first, last):
    for step in range(first, last):
        set_grads(params, step)
        opt.step()


def assert_close_at_scale(opt_a, opt_b, params_a, params_b):
    """float32 tolerance relative to each tensor's largest element. In a closure-driven run the
    grads depend on the params, so the backends' last-ulp differences feed back; and momentum built
    up while the loss is large, then cancelled, keeps the absolute rounding error of its largest
    values (a few float32 ulps of max|t|), which an element-wise rtol would not allow."""
    atol, rtol = F32
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        pairs = [("param", pa.detach(), pb.detach())]
        assert opt_a.state[pa].keys() == opt_b.state[pb].keys(), f"param {i}"
        pairs += [(key, value, opt_b.state[pb][key]) for key, value in opt_a.state[pa].items()]
        for key, va, vb in pairs:
            scale = va.abs().max().item() if va.numel() else 0.0
            torch.testing.assert_close(va.double(), vb.double(), atol=atol + rtol * scale, rtol=rtol,
                                       msg=lambda m: f"param {i} {key}: {m}")


def assert_identical(opt_a, opt_b, params_a, params_b):
    """Params and every state entry equal bit for bit, of the same dtypes."""
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert pa.dtype == pb.dtype and torch.equal(pa, pb), f"param {i}"
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys(), f"param {i}: {sorted(sa)} vs {sorted(sb)}"
        for key, value in sa.items():
            assert value.dtype == sb[key].dtype and torch.equal(value, sb[key]), f"param {i} state {key}"


LAYOUTS = {  # weight (10, 5) and bias (10,) as torch's test builds them, and two more layouts
    "contiguous": lambda g: (torch.randn(10, 5, generator=g), torch.randn(10, generator=g)),
    "strided": lambda g: (torch.randn(10, 5, 2, generator=g)[..., 0], torch.randn(10, 2, generator=g)[..., 0]),
    "every_other": lambda g: (torch.randn(10, 10, generator=g)[:, ::2], torch.randn(20, generator=g)[::2]),
    "transposed": lambda g: (torch.randn(5, 10, generator=g).t(), torch.randn(10, generator=g)),
}


def weight_bias(layout="contiguous"):
    g = torch.Generator().manual_seed(0)
    weight, bias = (t.requires_grad_() for t in LAYOUTS[layout](g))
    return weight, bias, torch.randn(5, generator=g)


def loss_closure(opt, weight, bias, x):
    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss
    return closure


def drive(name, kwargs, backend, layout="contiguous", groups=False, schedulers=(), steps_=20):
    """torch's right-direction loop: ``steps_`` steps through a closure; (first loss, last loss,
    params, optimizer)."""
    weight, bias, x = weight_bias(layout)
    params = [{"params": [weight]}, {"params": [bias], "lr": 0.01}] if groups else [weight, bias]
    opt = make(name, params, backend, **kwargs)
    scheds = [make_sched(opt) for make_sched in schedulers]
    closure = loss_closure(opt, weight, bias, x)
    first = closure().item()
    for _ in range(steps_):
        loss = opt.step(closure)
        for sched in scheds:
            sched.step(loss.item()) if isinstance(sched, ReduceLROnPlateau) else sched.step()
    return first, closure().item(), [weight, bias], opt


SCHEDULERS = (lambda o: StepLR(o, step_size=5, gamma=0.9), lambda o: ReduceLROnPlateau(o, patience=2))
