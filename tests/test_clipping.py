"""``max_grad_norm=``: the global-norm clip inside the step, on every backend. It must equal
``torch.nn.utils.clip_grad_norm_`` followed by the unclipped step, with AMP's scale (the norm is
the unscaled gradients'), with noise (the norm is the clean gradient's, before noise), across param
groups and devices' buckets; refuse bad values; capture with the step (tests/test_cuda_graphs.py)."""
from __future__ import annotations

import copy

import pytest
import torch

import noisefuse as nf
from cases import CONFIGS, TOLERANCES, assert_same_state, make_grads, make_params, on_cpu

BACKENDS = ("reference", "foreach", "native", "triton")
MAX_NORM = 0.5


def run(config, backend, params, steps=6, clip=None, scale=None, manual_clip=False, **kw):
    """``steps`` steps of ``config``; ``clip`` passed as max_grad_norm, or (``manual_clip``) applied
    with torch's clip_grad_norm_ before an unclipped step. ``scale`` multiplies the grads as AMP's
    GradScaler does and is handed to the step as its grad_scale."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    opt = CONFIGS[config](ps, backend=backend, max_grad_norm=None if manual_clip else clip, **kw)
    for step in range(steps):
        for p, g in zip(ps, make_grads(ps, step)):
            p.grad = g * 4.0  # norms well above MAX_NORM: the clip is active every step
        if manual_clip:
            torch.nn.utils.clip_grad_norm_(ps, clip)
        if scale is not None:
            for p in ps:
                p.grad = p.grad * scale
            opt.grad_scale, opt.found_inf = torch.tensor(float(scale)), torch.tensor(0.0)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", ["adapnm", "pnm_l2_demon", "demon_sgd_nesterov", "demon_adamw_ams"])
def test_equals_clip_grad_norm_then_step(config, backend, monkeypatch):
    on_cpu(backend, monkeypatch)
    params = make_params((0, 1, 1023, 4097))
    pa, oa = run(config, "reference", params, clip=MAX_NORM, manual_clip=True)
    pb, ob = run(config, backend, params, clip=MAX_NORM)
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_norm_is_of_the_unscaled_gradients(backend, monkeypatch):
    on_cpu(backend, monkeypatch)
    params = make_params((7, 1023))
    pa, oa = run("adapnm", "reference", params, clip=MAX_NORM, manual_clip=True)
    pb, ob = run("adapnm", backend, params, clip=MAX_NORM, scale=1024.0)
    assert_same_state(oa, ob, pa, pb, torch.float32)


def test_a_small_gradient_is_not_scaled_up():
    params = make_params((5, 33))
    pa, oa = run("demon_adam", "reference", params, clip=None)
    pb, ob = run("demon_adam", "reference", params, clip=1e6)
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_isotropic_noise_is_added_to_the_clipped_gradient(backend, monkeypatch):
    """The clip scales the clean gradient; the noise, drawn after, keeps its std."""
    on_cpu(backend, monkeypatch)
    params = make_params((1, 1023, 4097))
    noise = dict(noise=nf.noise.Isotropic(0.3), seed=5)
    pa, oa = run("pnm", "reference", params, clip=MAX_NORM, manual_clip=True, **noise)
    pb, ob = run("pnm", backend, params, clip=MAX_NORM, **noise)
    assert_same_state(oa, ob, pa, pb, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("noise", [nf.noise.DiagFisher(small_batch=2), nf.noise.Multiplicative("gaussian", sigma=0.7)])
def test_grad_sample_noise_is_formed_from_the_clipped_rows(noise, backend, monkeypatch):
    """Rows scaled by the coefficient that clips their mean (the clean gradient, p.grad when set, else
    the rows' mean): the noise is the clipped batch's own."""
    on_cpu(backend, monkeypatch)
    torch.manual_seed(0)
    params = make_params((1, 37, 1023))
    rows = [torch.randn(6, *p.shape) * 3 for p in params]

    def step(clip, manual, with_grad):
        ps = [p.detach().clone().requires_grad_() for p in params]
        opt = nf.AdaPNM(ps, lr=0.01, noise=noise, seed=3, backend=backend if not manual else "reference",
                        max_grad_norm=None if manual else clip)
        for p, r in zip(ps, rows):
            p.grad_sample = r.clone()
            if with_grad:
                p.grad = r.mean(0)
        if manual:
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(r.mean(0)) for r in rows]))
            coef = min(1.0, clip / (total.item() + 1e-6))
            for p in ps:
                p.grad_sample = p.grad_sample * coef
                if with_grad:
                    p.grad = p.grad * coef
        opt.step()
        return ps, opt

    for with_grad in (True, False):
        pa, oa = step(MAX_NORM, True, with_grad)
        pb, ob = step(MAX_NORM, False, with_grad)
        assert_same_state(oa, ob, pa, pb, torch.float32)


def test_one_norm_over_every_param_group():
    params = make_params((1023, 4097, 65))
    groups = [{"params": [0]}, {"params": [1, 2], "lr": 0.003}]
    ps_a = [p.detach().clone().requires_grad_() for p in params]
    ps_b = copy.deepcopy(ps_a)
    opt_a = nf.AdaPNM([dict(g, params=[ps_a[i] for i in g["params"]]) for g in groups], lr=0.01, backend="reference")
    opt_b = nf.AdaPNM([dict(g, params=[ps_b[i] for i in g["params"]]) for g in groups], lr=0.01, backend="native",
                      max_grad_norm=MAX_NORM)
    for step in range(4):
        for pa, pb, g in zip(ps_a, ps_b, make_grads(ps_a, step)):
            pa.grad, pb.grad = g * 3, g * 3
        torch.nn.utils.clip_grad_norm_(ps_a, MAX_NORM)
        opt_a.step()
        opt_b.step()
    assert_same_state(opt_a, opt_b, ps_a, ps_b, torch.float32)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), "1", True])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="Invalid max_grad_norm"):
        nf.PNM([torch.zeros(3, requires_grad=True)], lr=0.1, max_grad_norm=value)


def test_a_group_cannot_clip_to_another_norm():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="one global norm"):
        nf.PNM([{"params": [a]}, {"params": [b], "max_grad_norm": 2.0}], lr=0.1, max_grad_norm=1.0)


def test_state_dict_keeps_it_and_old_checkpoints_load():
    p = torch.zeros(3, requires_grad=True)
    opt = nf.DemonAdam([p], total_steps=10, max_grad_norm=1.5)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["max_grad_norm"] == 1.5
    del sd["param_groups"][0]["max_grad_norm"]  # a checkpoint from before the option existed
    fresh = nf.DemonAdam([p], total_steps=10)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["max_grad_norm"] is None
