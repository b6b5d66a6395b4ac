"""``torch.ops.noisefuse.triton_fused_step_``: the Triton fused step as a torch op, with the schema
of the native ``fused_step_`` (docs/kernel-contract.md) and the same declared mutations, except
that ``grad_scale``, ``found_inf``, ``lr_tensor`` and ``sample_weights`` are positional (a custom op
cannot take keyword-only tensors). The noise arguments ("Noise"): the positional ``grad_samples`` and
``sample_weights`` (read only) and the keyword-only ``offsets``, ``noise_kind``, ``seed`` (signed
int64), ``noise_std``, ``noise_scale``, ``noise_centered``, which default to no noise, and
``stochastic_rounding`` and ``stochastic_state_rounding`` (docs/kernel-contract.md, "Mixed
precision"), which default to rounding to nearest. 8-bit state ("8-bit blockwise state"): the
positional ``state_scales`` (written) and ``code_books``, and the keyword-only ``block_size``
(0: none), as the native op takes them. ``state_scales`` is an optional list (``Tensor(h!)[]?``) since
a schema cannot give a tensor list a default; ``infer_schema`` cannot spell that type, so the schema
is written out (``SCHEMA``).

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

_MUTATED = ("params", "exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "beta1_prods",
            "state_scales")
SCHEMA = (
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] neg_exp_avgs, "
    "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] steps, Tensor(g!)[] beta1_prods, "
    "Tensor[] grad_samples, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? lr_tensor=None, "
    "Tensor? sample_weights=None, Tensor(h!)[]? state_scales=None, Tensor? code_books=None, *, int momentum, "
    "float lr, float beta1, float beta2, float beta0, float eps, float weight_decay, bool decoupled, "
    "bool nesterov, bool maximize, int demon_total_steps, float demon_delay, int[] offsets, int noise_kind=0, "
    "int seed=0, float noise_std=0., float noise_scale=0., bool noise_centered=False, "
    "bool stochastic_rounding=False, bool stochastic_state_rounding=False, int block_size=0) -> ()")


@torch.library.custom_op("noisefuse::triton_fused_step_", mutates_args=_MUTATED, schema=SCHEMA)
def triton_fused_step_(
    params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
    neg_exp_avgs: List[torch.Tensor], exp_avg_sqs: List[torch.Tensor], max_exp_avg_sqs: List[torch.Tensor],
    steps: List[torch.Tensor], beta1_prods: List[torch.Tensor], grad_samples: List[torch.Tensor],
    grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
    lr_tensor: Optional[torch.Tensor] = None, sample_weights: Optional[torch.Tensor] = None,
    state_scales: Optional[List[torch.Tensor]] = None, code_books: Optional[torch.Tensor] = None, *, momentum: int,
    lr: float, beta1: float, beta2: float,
    beta0: float, eps: float, weight_decay: float, decoupled: bool, nesterov: bool, maximize: bool,
    demon_total_steps: int, demon_delay: float, offsets: List[int], noise_kind: int = 0, seed: int = 0,
    noise_std: float = 0.0, noise_scale: float = 0.0, noise_centered: bool = False,
    stochastic_rounding: bool = False, stochastic_state_rounding: bool = False, block_size: int = 0,
) -> None:
    """The update of docs/kernel-contract.md for one (device, dtype) group, in two Triton launches,
    with the gradient noise of ``noise_kind`` (``noisefuse.noise.NOISE_CODES``; 0: none), state
    lists of the params' dtype, float32 or bfloat16, or 8-bit codes (``block_size > 0``), and
    bfloat16 params (state) rounded stochastically from the ``seed``'s stream when
    ``stochastic_rounding`` (``stochastic_state_rounding``) ("Mixed precision")."""
    launch.fused_step(
        params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods, grad_samples,
        momentum=momentum, lr=lr, beta1=beta1, beta2=beta2, beta0=beta0, eps=eps,
        weight_decay=weight_decay, decoupled=decoupled, nesterov=nesterov, maximize=maximize,
        demon_total_steps=demon_total_steps, demon_delay=demon_delay, grad_scale=grad_scale,
        found_inf=found_inf, lr_tensor=lr_tensor, sample_weights=sample_weights, offsets=offsets, noise_kind=noise_kind, seed=seed,
        noise_std=noise_std, noise_scale=noise_scale, noise_centered=noise_centered,
        stochastic_rounding=stochastic_rounding, stochastic_state_rounding=stochastic_state_rounding,
        state_scales=state_scales, code_books=code_books, block_size=block_size)


@triton_fused_step_.register_fake
def _(params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods, grad_samples,
      grad_scale=None, found_inf=None, lr_tensor=None, sample_weights=None, state_scales=None, code_books=None,
      **kwargs):
    # In-place only: nothing to allocate, and no output whose shape the compiler must know.
    return None
