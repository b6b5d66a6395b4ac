"""Per-sample gradients with ``torch.func``, in Opacus's convention (``p.grad_sample``, ``[B, *p.shape]``),
for the noises that read them (``nf.noise.DiagFisher``, ``nf.noise.Multiplicative``)."""
from __future__ import annotations

import sys

import torch
from torch.func import functional_call, grad, vmap


def per_sample_grads(model: torch.nn.Module, loss_fn, inputs, *targets, chunk_size: int | None = None) -> torch.Tensor:
    r"""Fill ``p.grad_sample`` of every trainable parameter of ``model`` with the gradients of the
    per-sample losses :math:`\ell_i = \text{loss\_fn}(\text{model}(x_i), y_i, \dots)`; return the
    detached losses, shape ``[B]``.

    ``inputs`` and each of ``targets`` are batched on dimension 0. ``loss_fn`` receives the model's
    output and the targets for a batch of one sample (so ``F.cross_entropy`` with its default mean
    reduction gives that sample's loss) and must return a scalar.

    Computed as ``vmap(grad(loss))`` over ``functional_call(model, (params, buffers), x)``: buffers
    are passed unbatched, so modules with buffers work (batch norm must be in eval mode: per-sample
    gradients are undefined when the forward mixes samples through batch statistics). Randomness such
    as dropout differs between samples. ``p.grad`` is left untouched. ``chunk_size`` bounds memory
    by vectorising over that many samples at a time.
    """
    if not torch.is_tensor(inputs):
        raise TypeError("per_sample_grads(model, loss_fn, inputs, *targets): inputs must be a tensor")
    if _grad_sample_module_of(model) is not None:
        raise ValueError("per_sample_grads: this model is under Opacus's GradSampleModule, whose loss.backward() "
                         "already fills p.grad_sample in the same convention: call backward instead (its hooks "
                         "do not run under torch.func transforms)")
    batch = inputs.shape[0]
    for i, t in enumerate(targets):
        if not torch.is_tensor(t) or t.shape[:1] != (batch,):
            raise ValueError(f"per_sample_grads: target {i} must be a tensor batched like inputs "
                             f"(first dimension {batch}), got {getattr(t, 'shape', type(t))}")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("per_sample_grads: the model has no parameter that requires a gradient")
    params = {name: p.detach() for name, p in named}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def sample_loss(params, buffers, x, *ys):
        out = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        loss = loss_fn(out, *(y.unsqueeze(0) for y in ys))
        if loss.dim() != 0:
            raise ValueError(f"per_sample_grads: loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        return loss, loss

    in_dims = (None, None, 0) + (0,) * len(targets)
    per_sample = vmap(grad(sample_loss, has_aux=True), in_dims=in_dims, randomness="different",
                      chunk_size=chunk_size)
    with torch.enable_grad():
        grads, losses = per_sample(params, buffers, inputs, *targets)
    for name, p in named:
        p.grad_sample = grads[name].detach().to(p.dtype)
    return losses.detach()


def _grad_sample_module_of(model):
    """The Opacus GradSampleModule whose hooks are on ``model``'s modules (``model`` itself, or the
    module it wraps), else None. Looked for only when Opacus is imported."""
    gsm = getattr(sys.modules.get("opacus.grad_sample.grad_sample_module"), "GradSampleModule", None)
    if gsm is None:
        return None
    if isinstance(model, gsm):
        return model
    for module in model.modules():
        for hook in (*module._forward_hooks.values(), *module._backward_hooks.values()):
            owner = getattr(getattr(hook, "func", hook), "__self__", None)
            if isinstance(owner, gsm):
                return owner
    return None
