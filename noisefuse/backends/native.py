"""The native backend: ``torch.ops.noisefuse.fused_step_``, one op with a CPU and a CUDA kernel
(csrc/), chosen by PyTorch's dispatcher. Gradient noise is drawn inside the kernels, float32 state
of float16/bfloat16 params and stochastic rounding of bfloat16 params are handled there too.
See docs/backends/native.md."""
from __future__ import annotations

import warnings

import torch

from ..noise.step import NoiseStep
from ..random.philox import seed_as_int64
from .family import MOMENTUM_CODES, Family, Hyper
from .step_tensors import StepTensors

try:
    from .. import _C  # noqa: F401  (registers torch.ops.noisefuse.*)

    _LOAD_ERROR = None
except ImportError as exc:  # the extension was not built
    _LOAD_ERROR = exc


# Every noise kind is drawn inside the kernels (csrc/include/noisefuse/noise_element.h); the state
# may be float32 for float16/bfloat16 params (a template parameter of the kernels), and bfloat16
# params are rounded stochastically on store (csrc/include/noisefuse/bf16_rounding.h).
supports_noise = True
supports_mixed_state = True
supports_stochastic_rounding = True
_warned_layout = False


def load_error():
    return _LOAD_ERROR


def available(device: torch.device) -> bool:
    """Whether the extension has a kernel for tensors on ``device``."""
    if _LOAD_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("noisefuse::fused_step_", key)


def check_device(device: torch.device) -> None:
    if not available(device):
        reason = f"it failed to load: {_LOAD_ERROR}" if _LOAD_ERROR else f"it has no kernel for {device.type}"
        raise RuntimeError(f"backend='native' cannot run on {device}: {reason}")


def fused_step(family: Family, hyper: Hyper, ts: StepTensors, grad_scale=None, found_inf=None,
               noise: NoiseStep | None = None, rounding_seed: int | None = None) -> None:
    if not ts.params:
        return  # with no tensor argument the dispatcher could not choose a kernel
    rounds = rounding_seed is not None and ts.params[0].dtype == torch.bfloat16
    per_element = rounds or (noise is not None and noise.kind in ("isotropic", "diag_fisher"))
    if per_element and not all(p.is_contiguous() for p in ts.params):
        _foreach_for_layout(family, hyper, ts, grad_scale, found_inf, noise, rounding_seed)
        return
    noise_args = {}  # no noise: the op's defaults
    if noise is not None:
        noise_args = dict(sample_weights=noise.sample_weights, offsets=ts.offsets, noise_kind=noise.code,
                          seed=seed_as_int64(noise.seed), noise_std=noise.std, noise_scale=noise.scale,
                          noise_centered=noise.centered)
    if rounds:
        # One seed per param group: the noise's, when the group has noise too.
        noise_args.update(offsets=ts.offsets, seed=seed_as_int64(rounding_seed), stochastic_rounding=True)
    reads_rows = noise is not None and noise.consumes_grad_sample
    torch.ops.noisefuse.fused_step_(
        ts.params, ts.grads, ts.exp_avgs, ts.neg_exp_avgs, ts.exp_avg_sqs, ts.max_exp_avg_sqs,
        ts.steps, ts.beta1_prods, ts.grad_samples if reads_rows else [],
        momentum=MOMENTUM_CODES[family.momentum], lr=hyper.lr,
        beta1=hyper.beta1, beta2=hyper.beta2, beta0=hyper.beta0, eps=hyper.eps,
        weight_decay=hyper.weight_decay, decoupled=hyper.decoupled, nesterov=hyper.nesterov,
        maximize=hyper.maximize, demon_total_steps=hyper.demon_total_steps,
        demon_delay=hyper.demon_delay, grad_scale=grad_scale, found_inf=found_inf, **noise_args)


def _foreach_for_layout(family, hyper, ts, grad_scale, found_inf, noise, rounding_seed):
    """Normals and rounding bits are indexed by an element's row-major position; the kernels walk
    memory order, which differs for a dense non-contiguous param (channels_last, a transpose), and
    the op refuses such params for isotropic and diag_fisher noise and for stochastic rounding.
    Their group is stepped by the foreach backend: the same numbers, without fusion.
    (Multiplicative noise draws no per-element values: any layout.)"""
    global _warned_layout
    if not _warned_layout:
        _warned_layout = True
        what = f"noise={noise.kind!r}" if noise is not None else "stochastic_rounding=True"
        warnings.warn("backend='native': params that are not contiguous (e.g. channels_last) with "
                      f"{what} are stepped by the foreach backend", RuntimeWarning, stacklevel=4)
    from . import foreach

    foreach.fused_step(family, hyper, ts, grad_scale=grad_scale, found_inf=found_inf, noise=noise,
                       rounding_seed=rounding_seed)


if _LOAD_ERROR is None:
    # The FakeTensor kernel lets torch.compile trace the op without running it: the op only
    # mutates its inputs in place (declared in the schema) and returns nothing.
    _register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract

    @_register_fake("noisefuse::fused_step_")
    def _fused_step_fake(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                         beta1_prods, grad_samples, *, momentum, lr, beta1, beta2, beta0, eps, weight_decay,
                         decoupled, nesterov, maximize, demon_total_steps, demon_delay, grad_scale=None,
                         found_inf=None, sample_weights=None, offsets=(), noise_kind=0, seed=0, noise_std=0.0,
                         noise_scale=0.0, noise_centered=False, stochastic_rounding=False):
        return None

    # The Philox test ops (csrc/philox_ops.cpp) return new tensors: their fakes give the shapes.
    @_register_fake("noisefuse::philox4x32_10")
    def _philox4x32_10_fake(counters, seed):
        return torch.empty_like(counters)

    @_register_fake("noisefuse::philox_normal")
    def _philox_normal_fake(index, seed, step, tag):
        return torch.empty(index.shape, dtype=torch.float32, device=index.device)
