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
from .step_tensors import StepTensors


def rounds(ts: StepTensors, rounding_seed: int | None) -> bool:
    """Whether the call rounds its params stochastically: bfloat16 params given a seed."""
    return rounding_seed is not None and ts.params[0].dtype == torch.bfloat16


def layout_needs_foreach(ts: StepTensors, noise: NoiseStep | None, rounding_seed: int | None) -> bool:
    """Whether the call draws per element and has a param that is not row-major contiguous."""
    per_element = rounds(ts, rounding_seed) or (noise is not None and noise.kind in ("isotropic", "diag_fisher"))
    return per_element and not all(p.is_contiguous() for p in ts.params)


def stream_kwargs(ts: StepTensors, noise: NoiseStep | None, rounding_seed: int | None) -> dict:
    """The op's keyword arguments of the noise and the rounding (no noise, no rounding: offsets
    only, empty); the weight vector is passed apart (the two ops take it differently)."""
    kwargs = {"offsets": []}
    if noise is not None:
        kwargs = dict(offsets=ts.offsets, noise_kind=noise.code, seed=seed_as_int64(noise.seed),
                      noise_std=noise.std, noise_scale=noise.scale, noise_centered=noise.centered)
    if rounds(ts, rounding_seed):
        # One seed per param group: the noise's, when the group has noise too.
        kwargs.update(offsets=ts.offsets, seed=seed_as_int64(rounding_seed), stochastic_rounding=True)
    return kwargs


def step_with_foreach(backend, family, hyper, ts, grad_scale, found_inf, noise, rounding_seed) -> None:
    """Steps a call that ``layout_needs_foreach`` with foreach, warning once per ``backend`` module
    (its ``_warned_layout`` flag)."""
    if not backend._warned_layout:
        backend._warned_layout = True
        name = backend.__name__.rsplit(".", 1)[-1]
        what = f"noise={noise.kind!r}" if noise is not None else "stochastic_rounding=True"
        warnings.warn(f"backend={name!r}: params that are not contiguous (e.g. channels_last) with "
                      f"{what} are stepped by the foreach backend", RuntimeWarning, stacklevel=4)
    from . import foreach

    foreach.fused_step(family, hyper, ts, grad_scale=grad_scale, found_inf=found_inf, noise=noise,
                       rounding_seed=rounding_seed)
