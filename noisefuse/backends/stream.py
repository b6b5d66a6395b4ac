"""What the fused backends (native, triton) share about the random stream: the op arguments that
carry the noise and stochastic rounding (docs/kernel-contract.md, "Noise" and "Mixed precision"),
and the layouts they leave to foreach.

Normals and rounding bits are indexed by an element's row-major position, while the kernels walk
memory order; the two differ for a dense non-contiguous param (channels_last, a transpose), so a
group with such a param and per-element draws is stepped by the foreach backend: the same numbers,
without fusion. (Multiplicative noise draws no per-element values: any layout is fused.)
"""
from __future__ import annotations

import warnings

import torch

from ..noise.step import NoiseStep
from ..random.philox import seed_as_int64
from ..random.rounding import Rounding
from ..state import maps
from .step_tensors import StepTensors


def rounds(rounding: Rounding | None) -> bool:
    """Whether the call makes any store stochastically (and so draws per element)."""
    return rounding is not None and (rounding.params or rounding.state)


def is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``numel`` consecutive slots (any dimension order): what the
    fused kernels walk."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (of one shape) put every element at the same offset: equal strides in
    every dimension of more than one element (a size-1 dimension's stride is never used)."""
    return a.stride() == b.stride() or a.numel() <= 1 or all(
        sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n != 1)


def layout_needs_foreach(ts: StepTensors, noise: NoiseStep | None, rounding: Rounding | None) -> str | None:
    """Why the fused kernels cannot step the call, or None when they can: a param that is not dense
    (a strided view: the kernels walk ``numel`` consecutive elements), or one that is not row-major
    contiguous when the call draws per element or keeps 8-bit state (both indexed by the row-major
    position, which the kernels walk as memory order). Free when the call says its params are all
    contiguous (``StepTensors.all_contiguous``), else one ``is_contiguous`` per param."""
    if ts.all_contiguous or (ts.all_contiguous is None and all(p.is_contiguous() for p in ts.params)):
        return None
    row_major = [f"noise={noise.kind!r}"] if noise is not None and noise.kind in ("isotropic", "diag_fisher") else []
    row_major += ["stochastic rounding"] if rounds(rounding) else []
    row_major += ["8-bit state"] if ts.quantization is not None else []
    for p in ts.params:
        if p.is_contiguous():
            continue
        where = f"a param of shape {tuple(p.shape)} and strides {p.stride()}"
        if not is_dense(p):
            return f"{where} is not dense (a strided view)"
        if row_major:
            return f"{where} is not row-major contiguous, and the call has {' and '.join(row_major)}"
    return None


# The state lists in the kernels' order, as ``state_scales`` concatenates their scales.
STATE_FIELDS = ("exp_avgs", "neg_exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


def blockwise_kwargs(ts: StepTensors) -> dict:
    """The op's 8-bit state arguments (docs/kernel-contract.md, "8-bit blockwise state"); none
    without 8-bit state."""
    spec = ts.quantization
    if spec is None:
        return {}
    scales = [s for field in STATE_FIELDS if getattr(ts, field) for s in ts.scales[field]]
    return dict(state_scales=scales, code_books=maps.tables(spec.code_book, ts.params[0].device),
                block_size=spec.block_size)


def stream_kwargs(ts: StepTensors, noise: NoiseStep | None, rounding: Rounding | None) -> dict:
    """The op's keyword arguments of the noise and the rounding (no noise, no rounding: offsets
    only, empty); the weight vector is passed apart (the two ops take it differently)."""
    kwargs = {"offsets": []}
    if noise is not None:
        kwargs = dict(offsets=ts.offsets, noise_kind=noise.code, seed=seed_as_int64(noise.seed),
                      noise_std=noise.std, noise_scale=noise.scale, noise_centered=noise.centered)
    if rounds(rounding):
        # One seed per param group: the noise's, when the group has noise too.
        kwargs.update(offsets=ts.offsets, seed=seed_as_int64(rounding.seed))
        if rounding.params:
            kwargs["stochastic_rounding"] = True
        if rounding.state:
            kwargs["stochastic_state_rounding"] = True
    return kwargs


def step_with_foreach(backend, family, hyper, ts, grad_scale, found_inf, noise, rounding, reason: str) -> None:
    """Steps a call that ``layout_needs_foreach`` with foreach (torch's ops step any layout), warning
    once per ``backend`` module (its ``_warned_layout`` flag) with the ``reason``."""
    if not backend._warned_layout:
        backend._warned_layout = True
        name = backend.__name__.rsplit(".", 1)[-1]
        warnings.warn(f"backend={name!r}: {reason}; its call is stepped by the foreach backend (same results, not "
                      "fused). Contiguous params are stepped fused.", RuntimeWarning, stacklevel=4)
    from . import foreach

    foreach.fused_step(family, hyper, ts, grad_scale=grad_scale, found_inf=found_inf, noise=noise,
                       rounding=rounding)
