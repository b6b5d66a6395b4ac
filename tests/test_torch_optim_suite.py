"""PyTorch's generic optimizer checks, for the four optimizers on every backend: the numbers (the
API ones: tests/test_torch_optim_suite_api.py; shared inputs and helpers: tests/optim_suite.py).

torch checks each of its optimizers with the generic tests of ``TestOptimRenewed`` (torch's
test/test_optim.py), fed by ``torch.testing._internal.common_optimizers`` (an ``OptimizerInfo`` and
an ``optim_inputs_func`` of constructor kwargs per optimizer). That harness cannot drive ours: the
test class is not shipped in the wheel, and common_optimizers imports expecttest and describes
torch.optim's classes only. So the same checks are written here, each named after torch's test it
follows, with ``OPTIM_INPUTS`` in the role of ``optim_inputs_func``; and every check that steps a
backend also compares it with the reference backend (tolerances: cases.TOLERANCES).

Sampling (the file's budget is ~3 minutes on two cores; it takes ~80 s on two idle ones): reference,
foreach and native run every input of every check; Triton's interpreter takes ~50 ms a step, so it
runs one input per check and optimizer, a different one in each check (``inputs_for``), which
covers them all across the file.
Left out, as they do not apply on a CPU: the CUDA, multi-GPU and peak-memory tests, the
foreach/fused flags (our ``backend=``), differentiable=True (not supported) and complex params
(refused here: ``test_complex_and_sparse_are_refused``)."""
from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import StepLR

import noisefuse as nf
from cases import assert_same_state, make_params
# backend is a fixture: pytest finds it by its name in this module.
from optim_suite import (NAMES, OPTIM_INPUTS, SCHEDULERS, assert_close_at_scale, assert_identical, backend, clones,
                         drive, inputs_for, loss_closure, make, set_grads, steps, weight_bias)  # noqa: F401

# Non-dense params on the fused backends are stepped by foreach, with one warning (docs/integration.md).
pytestmark = pytest.mark.filterwarnings("ignore:.*stepped by the foreach backend")


@pytest.mark.parametrize("layout, with_lrsched", [("contiguous", False), ("contiguous", True), ("strided", False),
                                                  ("every_other", True), ("transposed", False)])
@pytest.mark.parametrize("name", NAMES)
def test_forloop_goes_right_direction(name, backend, layout, with_lrsched, request):
    schedulers = SCHEDULERS if with_lrsched else ()
    for kwargs in inputs_for(name, backend, request):
        first, last, params, opt = drive(name, kwargs, backend, layout, schedulers=schedulers)
        assert (last > first) if kwargs.get("maximize") else (last < first), kwargs
        _, _, ref_params, ref = drive(name, kwargs, "reference", layout, schedulers=schedulers)
        assert_close_at_scale(ref, opt, ref_params, params)
        assert all(p.stride() == q.stride() for p, q in zip(params, ref_params))  # stepped in place


@pytest.mark.parametrize("name", NAMES)
def test_param_group_with_lrscheduler_goes_right_direction(name, backend, request):
    for kwargs in inputs_for(name, backend, request):
        first, last, params, opt = drive(name, kwargs, backend, groups=True, schedulers=SCHEDULERS)
        assert (last > first) if kwargs.get("maximize") else (last < first), kwargs
        assert opt.param_groups[1]["lr"] < 0.01  # the scheduler moved the group's own lr
        _, _, ref_params, ref = drive(name, kwargs, "reference", groups=True, schedulers=SCHEDULERS)
        assert_close_at_scale(ref, opt, ref_params, params)


@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr(name, backend, request):
    # A tensor lr (float32, as torch's schedulers keep it) steps as the same value given as a float.
    for kwargs in inputs_for(name, backend, request):
        lr = float(torch.tensor(kwargs["lr"], dtype=torch.float32))
        runs = []
        for value in (lr, torch.tensor(lr)):
            params = make_params((0, 1, 10))
            opt = make(name, params, backend, **dict(kwargs, lr=value))
            sched = StepLR(opt, step_size=2, gamma=0.5)
            for step in range(5):
                set_grads(params, step)
                opt.step()
                sched.step()
            runs.append((params, opt))
        (pa, oa), (pb, ob) = runs
        assert torch.is_tensor(ob.param_groups[0]["lr"])
        assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_step_is_noop_when_params_have_no_grad(name, backend, request):
    # No grad at all: nothing moves, no state is made. A param whose grads stop: it and its state
    # stay as they were while the others step on.
    for kwargs in inputs_for(name, backend, request):
        params = make_params((0, 1, 6, 7))
        opt = make(name, params, backend, **kwargs)
        before = [p.detach().clone() for p in params]
        opt.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before)) and len(opt.state) == 0
        steps(opt, params, 0, 2)
        frozen = params[2].detach().clone(), {k: v.clone() for k, v in opt.state[params[2]].items()}
        moving = params[3].detach().clone()
        for step in range(2, 4):
            set_grads(params, step)
            params[2].grad = None
            opt.step()
        assert torch.equal(params[2], frozen[0]) and not torch.equal(params[3], moving)
        for key, value in frozen[1].items():
            assert torch.equal(opt.state[params[2]][key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_step_is_noop_for_zero_grads(name, backend, request):
    for kwargs in inputs_for(name, backend, request):
        params = make_params((0, 1, 9))
        before = [p.detach().clone() for p in params]
        opt = make(name, params, backend, **dict(kwargs, weight_decay=0.0))
        for _ in range(3):
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()
        assert all(torch.equal(p, b) for p, b in zip(params, before)), kwargs
        assert opt.state[params[2]]["step"].item() == 3


SHAPES = ((), (0,), (3, 0), (1,), (2, 3), (7,))  # 0-dim, 0-size, and small ones


def run_shapes(name, kwargs, backend, dtype):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in SHAPES]
    opt = make(name, params, backend, **kwargs)
    for step in range(6):
        set_grads(params, step)
        if step % 2 == 1:
            params[4].grad = None  # per-param step counters diverge
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        opt.step()
        for p, g in zip(params, grads):  # test_grads_are_never_inplaced_into
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_foreach_matches_forloop(name, backend, dtype, request):
    # torch's comparison of implementations, here every backend against the reference, with a
    # 0-dim and two 0-size params among them, in every param dtype.
    for kwargs in inputs_for(name, backend, request):
        pa, oa = run_shapes(name, kwargs, "reference", dtype)
        pb, ob = run_shapes(name, kwargs, backend, dtype)
        assert pb[0].dim() == 0 and all(p.dtype == dtype for p in pb)
        assert_same_state(oa, ob, pa, pb, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_device_dtype(name, backend, request):
    # One group, four dtypes: each (device, dtype) bucket is its own call.
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    for kwargs in inputs_for(name, backend, request):
        runs = []
        for b in ("reference", backend):
            params = [p for dtype in dtypes for p in make_params((5, 1), dtype=dtype)]
            opt = make(name, params, b, **kwargs)
            steps(opt, params, 0, 4)
            runs.append((params, opt))
        (pa, oa), (pb, ob) = runs
        for i, dtype in enumerate(dtypes):
            assert_same_state(oa, ob, pa[2 * i:2 * i + 2], pb[2 * i:2 * i + 2], dtype)


@pytest.mark.parametrize("name", NAMES)
def test_closure_returns_the_loss_and_zero_grad(name, backend):
    weight, bias, x = weight_bias()
    opt = make(name, [weight, bias], backend, **OPTIM_INPUTS[name][1][0])
    returned = []

    def closure():
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        returned.append(loss)
        return loss

    assert opt.step(closure) is returned[-1] and opt.step() is None
    grads = [weight.grad, bias.grad]
    opt.zero_grad(set_to_none=False)  # zeroed in place: the same tensors
    assert weight.grad is grads[0] and bias.grad is grads[1]
    assert not weight.grad.any() and not bias.grad.any()
    opt.zero_grad()  # set_to_none=True, torch's default
    assert weight.grad is None and bias.grad is None


STATES = {"bfloat16": torch.bfloat16, "8bit": nf.state.Blockwise8bit(block_size=16, min_numel=0)}


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("name", NAMES)
def test_found_inf_skips_everything_bit_for_bit(name, backend, state, request):
    # GradScaler's skipped step (found_inf=1) leaves params, every state entry (counters, Demon
    # products, 8-bit codes and scales) and the noise and rounding streams as they were: the run
    # equals one without it.
    if backend == "triton" and (NAMES.index(name) + sorted(STATES).index(state)) % 2:
        pytest.skip("Triton's interpreter: one state precision per optimizer (module docstring)")
    for kwargs in inputs_for(name, backend, request):
        kwargs = dict(kwargs, noise=nf.noise.Isotropic(std=0.01), state_dtype=STATES[state])
        runs = []
        for skipping in (False, True):
            params = make_params((0, 1, 9, 40))
            opt = make(name, params, backend, **kwargs)
            steps(opt, params, 0, 2)
            if skipping:
                set_grads(params, 2)
                params[2].grad[0] = float("inf")
                opt.grad_scale, opt.found_inf = torch.tensor([1024.0]), torch.tensor([1.0])
                opt.step()
                del opt.grad_scale, opt.found_inf
            steps(opt, params, 3, 5)
            runs.append((params, opt))
        (pa, oa), (pb, ob) = runs
        assert_identical(oa, ob, pa, pb)


@pytest.mark.parametrize("name", NAMES)
def test_grad_scaler(name, backend, request):
    # torch.amp.GradScaler drives the step: scaled grads, unscaled inside it (grad_scale), an inf
    # step skipped (found_inf); equal to the reference's unscaled run without that step.
    for kwargs in inputs_for(name, backend, request):
        weight, bias, x = weight_bias()
        opt = make(name, [weight, bias], backend, **kwargs)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
        ref_params = clones([weight, bias])
        ref = make(name, ref_params, "reference", **kwargs)
        ref_closure = loss_closure(ref, *ref_params, x)
        for step in range(5):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum() * (float("inf") if step == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if step != 2:
                ref.step(ref_closure)
        assert scaler.get_scale() == 2.0**9  # one inf step: halved once
        assert_close_at_scale(ref, opt, ref_params, [weight, bias])


@pytest.mark.parametrize("name", NAMES)
def test_complex_and_sparse_are_refused(name, backend):
    # torch.optim steps complex params (and refuses sparse grads); here both are refused at the step,
    # naming the param, before anything is written (docs/integration.md).
    for bad, match in ((torch.randn(3, dtype=torch.complex64), "param 0 of param group 1 is torch.complex64"),
                       (torch.randn(3), "sparse gradients \\(param 0 of param group 1\\)")):
        good = make_params((4,))
        bad = bad.requires_grad_()
        opt = make(name, [{"params": good}, {"params": [bad]}], backend, **OPTIM_INPUTS[name][1][0])
        set_grads(good, 0)
        bad.grad = torch.zeros_like(bad).to_sparse() if not bad.is_complex() else torch.ones_like(bad)
        before = good[0].detach().clone()
        with pytest.raises(RuntimeError, match=match):
            opt.step()
        assert torch.equal(good[0], before) and len(opt.state) == 0
