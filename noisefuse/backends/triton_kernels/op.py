"""``torch.ops.noisefuse.triton_fused_step_``: the Triton fused step as a torch op, with the schema
of the native ``fused_step_`` (docs/kernel-contract.md) and the same declared mutations, except
that ``grad_scale``, ``found_inf``, ``lr_tensor`` and ``sample_weights`` are positional (a custom op
cannot take keyword-only tensors). The noise arguments ("Noise"): the positional ``grad_samples`` and
``sample_weights`` (read only) and the keyword-only ``offsets``, ``noise_kind``, ``seed`` (signed
int64), ``noise_std``, ``noise_scale``, ``noise_centered``, which default to no noise, and
``stochastic_rounding`` and ``stochastic_state_rounding`` (docs/kernel-contract.md, "Mixed
precision"), which default to rounding to nearest.

Registered with ``torch.library.custom_op`` (an opaque op with a fake kernel), on every torch
version, rather than ``torch.library.triton_op``. ``triton_op`` lets ``torch.compile`` trace *into*
the Python body and treat the ``wrap_triton`` launches as the op; that is sound only when every
tensor a kernel touches is a kernel argument. Here the kernels reach params and state through a
table of data pointers: the traced body would need real addresses (fake tensors have none), and the
compiler would see the tables as the kernels' only inputs, so it could not know that params are
written (it may hand the op clones and copy them back over the result). An opaque op declares its
mutations in its schema, so a compiled graph calls it with the real tensors — or, if the compiler
chose to functionalize, with clones whose own pointers the table cache then picks up.
"""
from typing import List, Optional

import torch

from . import launch

_MUTATED = ("params", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "beta1_prods")


@torch.library.custom_op("noisefuse::triton_fused_step_", mutates_args=_MUTATED)
def triton_fused_step_(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    neg_exp_avgs: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta1_prods: List[torch.Tensor], grad_samples: List[torch.Tensor],
    grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
    lr_tensor: Optional[torch.Tensor] = None, sample_weights: Optional[torch.Tensor] = None, *, momentum: int, lr: float, beta1: float, beta2: float,
    beta0: float, eps: float, weight_decay: float, decoupled: bool, nesterov: bool, maximize: bool,
    demon_total_steps: int, demon_delay: float, offsets: List[int], noise_kind: int = 0, seed: int = 0,
    noise_std: float = 0.0, noise_scale: float = 0.0, noise_centered: bool = False,
    stochastic_rounding: bool = False, stochastic_state_rounding: bool = False,
) -> None:
    """The update of docs/kernel-contract.md for one (device, dtype) group, in two Triton launches,
    with the gradient noise of ``noise_kind`` (``noisefuse.noise.NOISE_CODES``; 0: none), state
    lists of the params' dtype, float32 or bfloat16, and bfloat16 params (state) rounded
    stochastically from the ``seed``'s stream when ``stochastic_rounding``
    (``stochastic_state_rounding``) ("Mixed precision")."""
    launch.fused_step(
        params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods, grad_samples,
        momentum=momentum, lr=lr, beta1=beta1, beta2=beta2, beta0=beta0, eps=eps,
        weight_decay=weight_decay, decoupled=decoupled, nesterov=nesterov, maximize=maximize,
        demon_total_steps=demon_total_steps, demon_delay=demon_delay, grad_scale=grad_scale,
        found_inf=found_inf, lr_tensor=lr_tensor, sample_weights=sample_weights, offsets=offsets, noise_kind=noise_kind, seed=seed,
        noise_std=noise_std, noise_scale=noise_scale, noise_centered=noise_centered,
        stochastic_rounding=stochastic_rounding, stochastic_state_rounding=stochastic_state_rounding)


@triton_fused_step_.register_fake
def _(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods, grad_samples,
      grad_scale=None, found_inf=None, lr_tensor=None, sample_weights=None, **kwargs):
    # In-place only: nothing to allocate, and no output whose shape the compiler must know.
    return None
