"""Shared inputs of the noise tests of every backend: one configuration per noise kind, a seed whose
32-bit halves are both >= 2^31 (kernels that receive them as int32 must not lose the sign bit), the
(noise, optimizer) pairs the comparisons run, and the run loop with per-sample gradients."""
from __future__ import annotations

import torch

import noisefuse as nf
from cases import CONFIGS

NOISES = {
    "isotropic": nf.noise.Isotropic(0.5),
    "diag_fisher": nf.noise.DiagFisher(small_batch=2),
    "diag_fisher_centered": nf.noise.DiagFisher(scale=0.7, centered=True),
    "mult_gaussian": nf.noise.Multiplicative("gaussian", small_batch=2),
    "mult_centered": nf.noise.Multiplicative("gaussian_centered", small_batch=3),
    "mult_bernoulli": nf.noise.Multiplicative("bernoulli", small_batch=3),
}
SEED = 0xF00DFACE_DEADBEEF
PAIRS = [("isotropic", "pnm_l2_demon"), ("diag_fisher", "adapnm"), ("diag_fisher_centered", "demon_sgd_nesterov"),
         ("mult_gaussian", "demon_adamw_ams"), ("mult_centered", "pnm"), ("mult_bernoulli", "adapnm_noams_demon")]


def noisy_run(config, backend, noise, params, steps=10, batch=6, groups=None, **kw):
    """``steps`` steps with per-sample gradients (``grad`` their mean); param 2 sits out every third
    step, so the step counters in the noise's counter differ between tensors."""
    ps = [p.detach().clone().requires_grad_() for p in params]
    arg = ps if groups is None else [dict(g, params=[ps[i] for i in g["params"]]) for g in groups]
    opt = CONFIGS[config](arg, backend=backend, noise=NOISES[noise], seed=SEED, **kw)
    for step in range(steps):
        for i, p in enumerate(ps):
            gen = torch.Generator().manual_seed(step * 1009 + i)
            rows = torch.randn((batch, *p.shape), generator=gen, dtype=torch.float64).to(p.dtype).to(p.device)
            skip = i == 2 and step % 3 == 1
            p.grad_sample = None if skip else rows
            p.grad = None if skip else rows.mean(0)
        opt.step()
    return ps, opt
