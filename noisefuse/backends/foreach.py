"""The foreach backend: the same update with ``torch._foreach_*`` ops (torch's multi-tensor path).

Tensors whose scalars coincide (in practice all of a bucket: they share their step) are updated
together; float16/bfloat16 tensors are upcast to float32 working copies so the math matches the
contract, then rounded once when copied back. float32 state (``state_dtype=torch.float32``) is
updated in place, with no working copy; bfloat16 params given a ``rounding_seed`` are rounded
stochastically (``noisefuse.random.rounding``) instead of to nearest.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from ..noise.step import NoiseStep
from ..noise.transforms import fisher_stats, weighted_mean
from ..noise.transforms import sample_weights as draw_weights  # noqa: F401  (the torch draw, with torch ops)
from ..random.philox import TAG_DIAG_FISHER, TAG_ISOTROPIC, element_normals_multi
from ..random.rounding import MAX_SECOND_MOMENT, MOMENTUM, PARAM, SECOND_MOMENT, Rounding, round_bf16_with, \
    rounding_bits_multi
from .family import Family, Hyper, tensor_scalars
from .reference import compute_dtype
from .step_tensors import StepTensors
from ..state.host_step import quantized_step


def _upcast(tensors, dt):
    if not tensors or tensors[0].dtype == dt:
        return list(tensors)
    return [t.to(dt) for t in tensors]


def _store(dst, src):
    if dst and dst[0] is not src[0]:  # src is a float32 working copy
        torch._foreach_copy_(dst, src)


def _take(tensors, idx):
    return [tensors[i] for i in idx]


supports_noise = True
supports_mixed_state = True
supports_stochastic_rounding = True
supports_blockwise_8bit = True  # noisefuse.state.host_step


def fused_step(family: Family, hyper: Hyper, ts: StepTensors, grad_scale=None, found_inf=None,
               noise: NoiseStep | None = None, rounding: Rounding | None = None) -> None:
    hyper = hyper.on_host()
    if ts.quantization is not None:
        return quantized_step(fused_step, family, hyper, ts, grad_scale, found_inf, noise=noise, rounding=rounding)
    if not ts.params:
        return
    if found_inf is not None and found_inf.item() != 0:
        return
    # Group tensors by their scalars; memoised on (step, prod) since those alone vary.
    steps = _host_values(ts.steps)
    prods = _host_values(ts.beta1_prods) if ts.beta1_prods else [None] * len(steps)
    memo, buckets = {}, defaultdict(list)
    for i, key in enumerate(zip(steps, prods)):
        if key not in memo:
            memo[key] = tensor_scalars(family, hyper, *key)
        buckets[memo[key]].append(i)
    for sc, idx in buckets.items():
        _bucket_step(family, hyper, sc, ts, idx, grad_scale, noise, rounding)


def _host_values(counters) -> list[float]:
    """The values of 0-d counters in one host read: one synchronisation for counters on an
    accelerator, where ``.item()`` per tensor would wait once per param."""
    return torch.stack([c.reshape(()) for c in counters]).tolist()


def _noisy(noise: NoiseStep, g, offsets, t):
    """SPEC.md section 0 step 3 over a bucket; the bucket's normals are drawn in one pass."""
    if noise.kind == "multiplicative":
        return [weighted_mean(rows, noise.sample_weights) for rows in g]
    if noise.kind == "isotropic":
        mean, coef, tag = g, noise.std, TAG_ISOTROPIC
    else:
        mean, root_f = map(list, zip(*(fisher_stats(rows, noise.centered) for rows in g)))
        coef, tag = torch._foreach_mul(root_f, noise.scale), TAG_DIAG_FISHER
    xi = element_normals_multi(noise.seed, t, tag, offsets, [m.numel() for m in mean], mean[0].device)
    xi = [x.view(m.shape).to(m.dtype) for x, m in zip(xi, mean)]
    if isinstance(coef, float):
        return torch._foreach_add(mean, torch._foreach_mul(xi, coef))
    return torch._foreach_add(mean, torch._foreach_mul(coef, xi))


def _stochastic_stores(family, ts, idx, rounding, t, params):
    """part -> the draws of each tensor of the bucket, for the stores ``rounding`` makes stochastic
    (one Philox pass for all of them); empty without."""
    parts = []
    if rounding is not None and rounding.params:
        parts.append(PARAM)
    if rounding is not None and rounding.state:
        parts += [MOMENTUM] + [SECOND_MOMENT] * family.second_moment + [MAX_SECOND_MOMENT] * family.amsgrad
    if not parts:
        return {}
    bits = rounding_bits_multi(rounding.seed, t, _take(ts.offsets, idx), [p.numel() for p in params], parts,
                               params[0].device)
    return dict(zip(parts, bits))


def _bucket_step(family, hyper, sc, ts, idx, grad_scale, noise=None, rounding=None):
    dt = compute_dtype(ts.params[0].dtype)
    params = _take(ts.params, idx)
    p = _upcast(params, dt)
    draws = _stochastic_stores(family, ts, idx, rounding, sc.t, params)

    def store(dst, xs, part):
        if part in draws:
            xs = [round_bf16_with(x, r.view(x.shape)) for x, r in zip(xs, draws[part])]
        _store(dst, xs)

    # With noise that reads per-sample gradients, unscale/maximize apply to each grad_sample row.
    reads_rows = noise is not None and noise.consumes_grad_sample
    user_grads = _take(ts.grad_samples if reads_rows else ts.grads, idx)
    g = _upcast(user_grads, dt)
    if grad_scale is not None:
        g = torch._foreach_div(g, grad_scale.reshape(()).to(device=g[0].device, dtype=dt))
    if hyper.maximize:
        if g[0] is user_grads[0]:
            g = torch._foreach_neg(g)  # never write the user's grad
        else:
            torch._foreach_neg_(g)
    if noise is not None:
        g = _noisy(noise, g, _take(ts.offsets, idx), sc.t)
    if hyper.decoupled:
        if hyper.weight_decay != 0:
            torch._foreach_mul_(p, 1.0 - hyper.lr * hyper.weight_decay)
    elif hyper.weight_decay != 0:
        g = torch._foreach_add(g, p, alpha=hyper.weight_decay)

    first = _take(ts.exp_avgs, idx)
    second = _take(ts.neg_exp_avgs, idx) if family.pn else None
    pos_store, neg_src = (first, second) if (not family.pn or sc.odd) else (second, first)
    m = _upcast(pos_store, dt)
    torch._foreach_mul_(m, sc.a)
    torch._foreach_add_(m, g, alpha=sc.b)
    if family.pn:
        d = torch._foreach_mul(m, sc.c_pos)
        torch._foreach_add_(d, _upcast(neg_src, dt), alpha=-sc.c_neg)
    elif hyper.nesterov:
        d = torch._foreach_add(g, m, alpha=sc.beta1_t)
    else:
        d = m

    if family.second_moment:
        v_store = _take(ts.exp_avg_sqs, idx)
        v = _upcast(v_store, dt)
        torch._foreach_mul_(v, hyper.beta2)
        torch._foreach_addcmul_(v, g, g, value=1.0 - hyper.beta2)
        vv = v
        if family.amsgrad:
            vmax_store = _take(ts.max_exp_avg_sqs, idx)
            vv = _upcast(vmax_store, dt)
            torch._foreach_maximum_(vv, v)
            store(vmax_store, vv, MAX_SECOND_MOMENT)
        store(v_store, v, SECOND_MOMENT)
        denom = torch._foreach_sqrt(vv)
        torch._foreach_mul_(denom, sc.inv_sqrt_bc2)
        torch._foreach_add_(denom, hyper.eps)
        torch._foreach_addcdiv_(p, d, denom, value=-sc.step_size)
    else:
        torch._foreach_add_(p, d, alpha=-hyper.lr)

    store(pos_store, m, MOMENTUM)
    store(params, p, PARAM)
    torch._foreach_add_(_take(ts.steps, idx), 1.0)
    if sc.new_beta1_prod is not None:
        prods = _take(ts.beta1_prods, idx)
        torch._foreach_zero_(prods)
        torch._foreach_add_(prods, sc.new_beta1_prod)
