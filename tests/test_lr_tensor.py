"""A learning rate given as a tensor (torch.optim's convention for capturable LR schedules): every
backend steps exactly as with the same value as a float, an LR scheduler that writes the tensor in
place drives the step, the fused ops read it instead of their ``lr`` argument, and a bad one is
refused before anything is written."""
from dataclasses import replace

import pytest
import torch

import noisefuse as nf
from cases import ALL_BACKENDS, CONFIGS, FUSED, assert_same_state, make_grads, make_params, on_cpu
from noisefuse import backends
from test_native import FAMILIES, assert_same, clone, op_args, step_tensors


@pytest.fixture(params=ALL_BACKENDS)
def backend(request, monkeypatch):
    return on_cpu(request.param, monkeypatch)


@pytest.fixture(params=FUSED)
def fused_backend(request, monkeypatch):
    return on_cpu(request.param, monkeypatch)


def _float32_value(x: float) -> float:
    """``x`` rounded to float32, as a Python float: what a float32 lr tensor holds."""
    return float(torch.tensor(x, dtype=torch.float32))


def _run(config, backend, params, lr_as_tensor, steps=8, scheduler=None):
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS[config](ps, backend=backend)
    for group in opt.param_groups:
        lr = _float32_value(group["lr"])
        group["lr"] = torch.tensor(lr) if lr_as_tensor else lr
    lr_tensors = [group["lr"] for group in opt.param_groups]
    sched = scheduler(opt) if scheduler else None
    for step in range(steps):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g
        opt.step()
        if sched:
            sched.step()
    if lr_as_tensor:  # schedulers write a tensor lr in place: a captured graph keeps seeing it
        assert all(group["lr"] is t for group, t in zip(opt.param_groups, lr_tensors))
    return ps, opt


def _assert_bit_identical(opt_a, opt_b, params_a, params_b):
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert torch.equal(pa, pb), f"param {i}"
        for key, value in opt_a.state[pa].items():
            assert torch.equal(value, opt_b.state[pb][key]), f"param {i} state {key}"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_tensor_lr_steps_exactly_like_the_same_float_lr(config, backend):
    # The lr (and 1 - lr * weight_decay) is formed in double from the same float32 value either way.
    params = make_params()
    pa, oa = _run(config, backend, params, lr_as_tensor=False)
    pb, ob = _run(config, backend, params, lr_as_tensor=True)
    _assert_bit_identical(oa, ob, pa, pb)


@pytest.mark.parametrize("config", ["adapnm", "demon_adamw_ams", "pnm_l2_demon", "demon_sgd_nesterov"])
def test_scheduler_drives_a_tensor_lr(config, backend):
    def schedule(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10)

    params = make_params((5, 1023))
    pa, oa = _run(config, "reference", params, lr_as_tensor=False, scheduler=schedule)
    pb, ob = _run(config, backend, params, lr_as_tensor=True, scheduler=schedule)
    # The scheduled values are float32 in the tensor, doubles in the reference run: a relative
    # difference of 2^-24 in the lr, far inside the float32 tolerance.
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_a_float64_lr_tensor_is_read_as_float32(backend):
    params = make_params((3, 70))
    runs = []
    for lr in (_float32_value(0.01), torch.tensor(0.01, dtype=torch.float64)):
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = nf.AdaPNM(ps, lr=lr, weight_decay=0.1, backend=backend)
        for step in range(8):
            for p, g in zip(ps, make_grads(ps, step)):
                p.grad = g
            opt.step()
        runs.append((opt, ps))
    (oa, pa), (ob, pb) = runs
    _assert_bit_identical(oa, ob, pa, pb)


@pytest.mark.parametrize("name", ["pn_ams", "heavy_ball"])
def test_fused_op_reads_lr_tensor_instead_of_lr(name, fused_backend):
    family, hyper = FAMILIES[name]
    module = backends.get(fused_backend)
    ts = step_tensors(family, hyper)
    expected = clone(ts)
    module.fused_step(family, replace(hyper, lr=_float32_value(hyper.lr)), expected)
    module.fused_step(family, replace(hyper, lr=123.0, lr_tensor=torch.tensor(hyper.lr)), ts)
    assert_same(expected, ts, torch.float32, exact=True)


@pytest.mark.parametrize("bad", [torch.tensor(0.01, dtype=torch.float64), torch.tensor([0.01, 0.02])],
                         ids=["float64", "two_elements"])
def test_fused_op_refuses_a_bad_lr_tensor_before_any_write(bad, fused_backend):
    family, hyper = FAMILIES["pn_ams"]
    ts = step_tensors(family, hyper)
    before = clone(ts)
    with pytest.raises(RuntimeError, match="lr_tensor must"):
        backends.get(fused_backend).fused_step(family, replace(hyper, lr_tensor=bad), ts)
    assert_same(before, ts, torch.float32, exact=True)


def test_native_opcheck_with_lr_tensor(monkeypatch):
    on_cpu("native", monkeypatch)
    family, hyper = FAMILIES["ema_ams"]
    ts = step_tensors(family, hyper, sizes=(3, 70))
    args, kwargs = op_args(family, hyper, ts, lr_tensor=torch.tensor(0.01))
    torch.library.opcheck(torch.ops.noisefuse.fused_step_.default, args, kwargs)


def test_lr_tensor_must_have_one_element():
    with pytest.raises(ValueError, match="lr as a Tensor must have exactly one element"):
        nf.PNM(make_params((3,)), lr=torch.tensor([0.1, 0.2]))
