"""A few steps on scalars, checked against values worked out by hand from SPEC.md.

Each expected value below is written as the arithmetic of the hand derivation, so a reader can
follow it line by line. Every backend runs through these (the fused ones against the same numbers).
"""
import math

import pytest
import torch

import noisefuse as nf
from noisefuse.backends.family import demon_beta

from cases import cpu_backends

BACKENDS = cpu_backends()
SQRT5 = math.sqrt(5.0)  # sqrt((1 + beta0)^2 + beta0^2) for beta0 = 1


def scalar_run(make_opt, grads, p0=1.0):
    p = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    opt = make_opt([p])
    trajectory = []
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        trajectory.append(p.item())
    return trajectory, opt.state[p]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pnm_alternates_buffers(backend):
    # beta1 = 0.5 -> buffers decay by 0.25 and take 0.75 of the gradient; beta0 = 1.
    traj, state = scalar_run(lambda ps: nf.PNM(ps, lr=0.1, betas=(0.5, 1.0), backend=backend), [1.0, 2.0, 3.0])
    # t=1 (odd): pos_momentum = 0.75*1 = 0.75, neg_momentum = 0
    p1 = 1.0 - 0.1 * (2 * 0.75 - 0.0) / SQRT5
    # t=2 (even): roles swap, neg_momentum takes the gradient: 0.75*2 = 1.5; the other buffer is 0.75
    p2 = p1 - 0.1 * (2 * 1.5 - 0.75) / SQRT5
    # t=3 (odd): pos_momentum = 0.25*0.75 + 0.75*3 = 2.4375; neg_momentum = 1.5
    p3 = p2 - 0.1 * (2 * 2.4375 - 1.5) / SQRT5
    assert traj == pytest.approx([p1, p2, p3], abs=1e-12)
    assert state["pos_momentum"].item() == pytest.approx(2.4375)
    assert state["neg_momentum"].item() == pytest.approx(1.5)
    assert state["step"].item() == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("amsgrad", [True, False])
def test_adapnm_two_steps(backend, amsgrad):
    make = lambda ps: nf.AdaPNM(ps, lr=0.1, betas=(0.5, 0.5, 1.0), eps=0.0, amsgrad=amsgrad, backend=backend)
    traj, state = scalar_run(make, [2.0, 0.5])
    # t=1: exp_avg = 0.75*2 = 1.5; v = 0.5*4 = 2; bc1 = bc2 = 0.5; denom = sqrt(2)/sqrt(0.5) = 2
    p1 = 1.0 - (0.1 / 0.5) * ((2 * 1.5) / SQRT5) / 2.0
    # t=2 (even): neg_exp_avg = 0.75*0.5 = 0.375; v = 0.5*2 + 0.5*0.25 = 1.125; bc1 = bc2 = 0.75
    pn = (2 * 0.375 - 1.5) / SQRT5
    vv = 2.0 if amsgrad else 1.125  # amsgrad keeps max(2, 1.125)
    p2 = p1 - (0.1 / 0.75) * pn / (math.sqrt(vv) / math.sqrt(0.75))
    assert traj == pytest.approx([p1, p2], abs=1e-12)
    assert state["exp_avg_sq"].item() == pytest.approx(1.125)
    assert ("max_exp_avg_sq" in state) == amsgrad
    if amsgrad:
        assert state["max_exp_avg_sq"].item() == pytest.approx(2.0)


@pytest.mark.parametrize(
    "s, expected",
    [
        (0, 0.9),  # the first step uses beta_init
        (50, 0.9 * 0.5 / (0.1 + 0.9 * 0.5)),  # s = T/2: f = 1/2
        (99, 0.9 * 0.01 / (0.1 + 0.9 * 0.01)),  # s = T-1: f = 1/100
        (100, 0.0),  # s = T: decayed to 0
        (200, 0.0),  # s = 2T: stays 0
    ],
)
def test_demon_schedule(s, expected):
    assert demon_beta(0.9, s + 1, 100) == pytest.approx(expected, abs=1e-15)
    assert nf.Demon(100).beta(0.9, s + 1) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    "s, expected",
    [
        (10, 0.9),  # before the delay D = 0.2*100 = 20
        (20, 0.9),  # decay starts at s = D with f = 1
        (60, 0.9 * 0.5 / (0.1 + 0.9 * 0.5)),  # f = 1 - 40/80
        (100, 0.0),
    ],
)
def test_demon_schedule_with_delay(s, expected):
    assert nf.Demon(100, delay=0.2).beta(0.9, s + 1) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_demon_sgd_heavy_ball(backend):
    # momentum 0.5, T = 2: beta = 0.5 (s=0), 0.5*0.5/(0.5+0.25) = 1/3 (s=1), 0 (s=2)
    traj, state = scalar_run(lambda ps: nf.DemonSGD(ps, lr=0.1, momentum=0.5, total_steps=2, backend=backend),
                             [1.0, 1.0, 1.0])
    p1 = 1.0 - 0.1 * 1.0  # buf = 1, as torch.optim.SGD's first step
    p2 = p1 - 0.1 * (1.0 / 3.0 * 1.0 + 1.0)  # buf = 4/3
    p3 = p2 - 0.1 * (0.0 * 4.0 / 3.0 + 1.0)  # buf = 1
    assert traj == pytest.approx([p1, p2, p3], abs=1e-12)
    assert state["momentum_buffer"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_demon_adam_exact_bias_correction(backend):
    # With a constant gradient c the exactly bias-corrected moments are m/bc1 = c and v/bc2 = c^2,
    # so every step moves p by exactly lr (eps = 0) while beta decays; 1 - beta_t^t would not.
    T, lr, steps = 6, 0.1, 9
    traj, state = scalar_run(lambda ps: nf.DemonAdam(ps, lr=lr, betas=(0.9, 0.5), eps=0.0, total_steps=T,
                                                     backend=backend), [3.0] * steps)
    assert traj == pytest.approx([1.0 - lr * (k + 1) for k in range(steps)], abs=1e-6)
    product = math.prod(demon_beta(0.9, t, T) for t in range(1, steps + 1))
    assert state["beta1_prod"].item() == pytest.approx(product, rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adapnm_demon_uses_product_bias_correction(backend):
    # AdaPNM with Demon: PN buffers decay with beta_t^2, bc1 = 1 - prod beta_t. One step by hand:
    traj, state = scalar_run(lambda ps: nf.AdaPNM(ps, lr=0.1, betas=(0.5, 0.5, 1.0), eps=0.0, demon=4,
                                                  backend=backend), [2.0, 2.0])
    p1 = 1.0 - (0.1 / 0.5) * ((2 * 1.5) / SQRT5) / 2.0  # as the plain AdaPNM step 1
    beta2nd = 0.5 * 0.75 / (0.5 + 0.5 * 0.75)  # s = 1, f = 3/4
    neg = (1 - beta2nd**2) * 2.0
    pn = (2 * neg - 1.5) / SQRT5
    v = 0.5 * 2.0 + 0.5 * 4.0
    bc1 = 1.0 - 0.5 * beta2nd
    p2 = p1 - (0.1 / bc1) * pn / (math.sqrt(v) / math.sqrt(0.75))
    assert traj == pytest.approx([p1, p2], abs=1e-12)
    assert state["beta1_prod"].item() == pytest.approx(0.5 * beta2nd, rel=1e-7)
