"""The reference backend: a plain loop over tensors that reads like SPEC.md. The oracle of every test.

Each tensor is updated in float32 (float64 for float64 params) and rounded once when stored: state
to its own dtype (the param's, float32 with ``state_dtype=torch.float32``: then stored exactly, or
bfloat16), the param to its dtype; to nearest, or stochastically where the call's ``Rounding`` says
(bfloat16 params, bfloat16 state; docs/kernel-contract.md, "Mixed precision").
"""
from __future__ import annotations

import torch

from ..noise.step import NoiseStep
from ..noise.transforms import sample_weights as draw_weights  # noqa: F401  (the torch draw: the oracle)
from ..random.rounding import MAX_SECOND_MOMENT, MOMENTUM, PARAM, SECOND_MOMENT, Rounding, stochastic_round_bf16
from .family import Family, Hyper, tensor_scalars
from .step_tensors import StepTensors
from ..state.host_step import quantized_step


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


supports_noise = True
supports_mixed_state = True
supports_stochastic_rounding = True
supports_blockwise_8bit = True  # noisefuse.state.host_step


def fused_step(family: Family, hyper: Hyper, ts: StepTensors, grad_scale=None, found_inf=None,
               noise: NoiseStep | None = None, rounding: Rounding | None = None) -> None:
    hyper = hyper.on_host()
    if ts.quantization is not None:
        return quantized_step(fused_step, family, hyper, ts, grad_scale, found_inf, noise=noise, rounding=rounding)
    if found_inf is not None and found_inf.item() != 0:
        return  # AMP found an inf/nan: the step is a no-op, counters included
    for i, param in enumerate(ts.params):
        prod = ts.beta1_prods[i].item() if ts.beta1_prods else None
        sc = tensor_scalars(family, hyper, ts.steps[i].item(), prod)
        dt = compute_dtype(param.dtype)

        def store(dst, x, part):
            """``x`` into ``dst``: stochastically with the bits of ``part`` where the call says so."""
            stochastic = rounding is not None and (rounding.params if part == PARAM else rounding.state)
            if stochastic:
                x = stochastic_round_bf16(x, rounding.seed, sc.t, ts.offsets[i], part)
            dst.copy_(x)

        # With noise that reads per-sample gradients, steps 1-2 apply to each grad_sample row.
        reads_rows = noise is not None and noise.consumes_grad_sample
        g = (ts.grad_samples[i] if reads_rows else ts.grads[i]).to(dt)
        if grad_scale is not None:
            g = g / grad_scale.to(device=g.device, dtype=dt).reshape(())  # one element, maybe [1]: a 0-d grad stays 0-d
        if hyper.maximize:
            g = -g
        if noise is not None:
            g = noise.apply(g, sc.t, ts.offsets[i])
        p = param.to(dt)
        if hyper.decoupled:
            p = p * (1.0 - hyper.lr * hyper.weight_decay)
        else:
            g = g + hyper.weight_decay * p

        if family.pn:
            pos, neg = (ts.exp_avgs[i], ts.neg_exp_avgs[i]) if sc.odd else (ts.neg_exp_avgs[i], ts.exp_avgs[i])
        else:
            pos, neg = ts.exp_avgs[i], None
        m = sc.a * pos.to(dt) + sc.b * g
        if family.pn:
            d = sc.c_pos * m - sc.c_neg * neg.to(dt)
        elif hyper.nesterov:
            d = g + sc.beta1_t * m
        else:
            d = m

        if family.second_moment:
            v = hyper.beta2 * ts.exp_avg_sqs[i].to(dt) + (1.0 - hyper.beta2) * g * g
            vv = v
            if family.amsgrad:
                vv = torch.maximum(ts.max_exp_avg_sqs[i].to(dt), v)
                store(ts.max_exp_avg_sqs[i], vv, MAX_SECOND_MOMENT)
            store(ts.exp_avg_sqs[i], v, SECOND_MOMENT)
            p = p - sc.step_size * (d / (vv.sqrt() * sc.inv_sqrt_bc2 + hyper.eps))
        else:
            p = p - hyper.lr * d

        store(pos, m, MOMENTUM)
        store(param, p, PARAM)
        ts.steps[i].fill_(sc.t)
        if sc.new_beta1_prod is not None:
            ts.beta1_prods[i].fill_(sc.new_beta1_prod)
