"""Stochastic rounding of float32 values to bfloat16, drawn from the one Philox stream (SPEC.md
section 5): the vectorised torch reference of every backend (docs/kernel-contract.md, "Mixed
precision").

A float32 ``x`` lies between two neighbouring bfloat16 values ``lo <= x < hi`` (``hi`` one bf16 ulp
further from zero). Stochastic rounding returns ``hi`` with probability ``(|x| - |lo|) / ulp`` and
``lo`` otherwise, so ``E[round(x)] = x``: updates smaller than half an ulp, which rounding to nearest
drops every time, survive on average. On the bits:

.. code-block:: text

    r    = x0 & 0xFFFF            x0: first word of Philox4x32-10 at counter
                                  (lo32(i), hi32(i), lo32(t), TAG_ROUNDING = 4), key (lo32(seed), hi32(seed))
    bf16 = (bits(x) + r) >> 16    bits(x): the float32's 32-bit pattern, as an unsigned integer
    NaN  -> 0x7FC0 (sign dropped, as torch's own conversion);  +-inf -> bits(x) >> 16

The low 16 bits of ``bits(x)`` are the fraction of an ulp (in units of 2^-16 ulp) below ``|x|``;
adding a uniform ``r`` in ``[0, 2^16)`` carries into the kept bits with exactly that probability, and
the sign bit makes it round the magnitude, which is unbiased for negative values too. A carry out of
the largest finite bfloat16 gives infinity, as rounding up should. Infinities have zero low bits, so
the formula alone would keep them; NaNs would not (a NaN whose fraction lives in the low 16 bits
truncates to infinity, and ``0x7FFFFFFF + r`` carries into the sign), hence the explicit cases.

``i`` is the element's global index (its param's offset in the concatenation of every param of the
optimizer plus its row-major position, as for the noise) and ``t`` the tensor's step after the
increment, so the bits are a pure function of (seed, step, element): the same whatever the chunking,
grouping or backend.
"""
from __future__ import annotations

import torch

from .philox import CHUNK, MASK32, TAG_ROUNDING, element_counters, philox4x32, split_seed

_NAN_BF16 = 0x7FC0
_EXPONENT = 0x7F800000


def rounding_bits_at(seed: int, step: int, index: torch.Tensor) -> torch.Tensor:
    """The 16-bit draws ``r`` (int64 in ``[0, 2^16)``) of the global element indices ``index``
    (int64, any shape) at ``step``."""
    k0, k1 = split_seed(seed)
    flat = index.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.int64, device=index.device)
    for start in range(0, flat.numel(), CHUNK):
        x0, _, _, _ = philox4x32(*element_counters(flat[start:start + CHUNK], step, TAG_ROUNDING), k0, k1)
        out[start:start + CHUNK] = x0 & 0xFFFF
    return out.view(index.shape)


def round_bf16_with(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to bfloat16 with the draws ``r`` (int64 in ``[0, 2^16)``, the shape of
    ``x``, element by element in ``x``'s logical order): ``(bits(x) + r) >> 16`` with NaN and
    infinities kept (module docstring)."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic rounding takes float32 values, got {x.dtype}")
    bits = x.view(torch.int32).to(torch.int64) & MASK32
    rounded = (bits + r) >> 16
    special = (bits & _EXPONENT) == _EXPONENT  # inf or NaN: never let the add reach them
    rounded = torch.where(special, torch.where(x.isnan(), _NAN_BF16, bits >> 16), rounded)
    # [0, 2^16) as the int16 with the same bits, then reinterpreted as bfloat16.
    rounded = rounded - ((rounded >> 15) << 16)
    return rounded.to(torch.int16).view(torch.bfloat16)


def stochastic_round_bf16(x: torch.Tensor, seed: int, step: int, offset: int) -> torch.Tensor:
    """``x`` (float32), the new value of a param whose first element has global index ``offset``,
    rounded stochastically to bfloat16 at ``step`` (the reference backend's call)."""
    index = torch.arange(offset, offset + x.numel(), dtype=torch.int64, device=x.device).view(x.shape)
    return round_bf16_with(x, rounding_bits_at(seed, step, index))


def stochastic_round_bf16_multi(xs, seed: int, step: int, offsets) -> list[torch.Tensor]:
    """``stochastic_round_bf16`` of several tensors at one step, their draws made in one vectorised
    pass (the foreach backend's call)."""
    if not xs:
        return []
    device = xs[0].device
    index = torch.cat([torch.arange(o, o + x.numel(), dtype=torch.int64, device=device)
                       for o, x in zip(offsets, xs)])
    r = rounding_bits_at(seed, step, index).split([x.numel() for x in xs])
    return [round_bf16_with(x, ri.view(x.shape)) for x, ri in zip(xs, r)]
