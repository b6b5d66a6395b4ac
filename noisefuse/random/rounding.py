"""Stochastic rounding of float32 values to bfloat16, drawn from the one Philox stream (SPEC.md
section 5): the vectorised torch reference of every backend (docs/kernel-contract.md, "Mixed
precision").

A float32 ``x`` lies between two neighbouring bfloat16 values ``lo <= x < hi`` (``hi`` one bf16 ulp
further from zero). Stochastic rounding returns ``hi`` with probability ``(|x| - |lo|) / ulp`` and
``lo`` otherwise, so ``E[round(x)] = x``: updates smaller than half an ulp, which rounding to nearest
drops every time, survive on average. On the bits:

.. code-block:: text

    r    = (w >> 16 h) & 0xFFFF   w: the element's 32-bit rounding word k (below), h in {0, 1} the
                                  store's half of it
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

An element has at most four stochastic stores of 16 bits each, and a Philox output holds 128 bits:
the four elements ``4g .. 4g + 3`` (group ``g = i >> 2`` of global indices) share one evaluation per
word, element ``i`` taking output word ``x[i & 3]`` as its rounding word ``k`` (``k`` = 0, 1):

.. code-block:: text

    w_k(i) = x[i & 3] of Philox4x32-10(counter (lo32(i >> 2), hi32(i >> 2), lo32(t), TAG_ROUNDING + k),
                                       key (lo32(seed), hi32(seed)))          TAG_ROUNDING = 4

    store s             word k = s >> 1   half h = s & 1
    MOMENTUM          0   w_0 & 0xFFFF      the momentum buffer the step writes (PN: the "positive" one)
    SECOND_MOMENT     1   w_0 >> 16         exp_avg_sq
    PARAM             2   w_1 & 0xFFFF      the param (bfloat16 params, stochastic_rounding=True)
    MAX_SECOND_MOMENT 3   w_1 >> 16         max_exp_avg_sq (amsgrad)

A step evaluates only the words its stores use: bfloat16 state without amsgrad (PNM, DemonSGD,
DemonAdam) one Philox per four elements, with amsgrad or stochastic params as well two. Momentum and
second moment share a word because every bfloat16-state step writes both or the first alone. A
group is of global indices, so it may straddle two tensors (each evaluates it where it needs it).

(Until 2026-12-07 every element had a Philox evaluation of its own at counter ``(lo32(i), hi32(i),
lo32(t), 4)``, whose ``x0, x1`` held the four stores' bits: the same distribution, other bits, up to
four times the Philox work. Checkpoints carry no draws, so older ones load unchanged; a run resumed
across the change continues with the new bits.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .philox import CHUNK, MASK32, TAG_ROUNDING, element_counters, philox4x32, split_seed

_NAN_BF16 = 0x7FC0
_EXPONENT = 0x7F800000


# The stores that may be rounded stochastically: store s takes half s & 1 of the element's rounding
# word s >> 1 (module docstring).
MOMENTUM, SECOND_MOMENT, PARAM, MAX_SECOND_MOMENT = range(4)
ROUNDING_WORDS = 2  # words per element, each drawn under tag TAG_ROUNDING + k


@dataclass(frozen=True)
class Rounding:
    """The stochastic stores of one ``fused_step`` call (docs/kernel-contract.md, "Mixed precision"):
    the params (bfloat16 params only) and/or the state buffers (bfloat16 state only), their bits
    drawn from the stream of ``seed`` at the elements' global indices (``StepTensors.offsets``)."""

    seed: int
    params: bool = False
    state: bool = False


def rounding_words_at(seed: int, step: int, index: torch.Tensor, word: int) -> torch.Tensor:
    """Rounding word ``word`` (0 or 1; int64 in ``[0, 2^32)``) of the global element indices ``index``
    (a flat int64 tensor of at most CHUNK elements) at ``step``: output word ``index & 3`` of Philox at
    the group counter ``(lo32(index >> 2), hi32(index >> 2), lo32(step), TAG_ROUNDING + word)``
    (module docstring)."""
    if word not in range(ROUNDING_WORDS):
        raise ValueError(f"rounding word must be 0 or 1, got {word!r}")
    k0, k1 = split_seed(seed)
    # Each group once: runs of equal groups (a tensor's consecutive indices) share one evaluation.
    groups, which = torch.unique_consecutive(index >> 2, return_inverse=True)
    words = torch.stack(philox4x32(*element_counters(groups, step, TAG_ROUNDING + word), k0, k1), dim=1)
    return words[which, index & 3]


def rounding_bits_at(seed: int, step: int, index: torch.Tensor, parts=(PARAM,)) -> list[torch.Tensor]:
    """The 16-bit draws ``r`` (int64 in ``[0, 2^16)``, the shape of ``index``) of the global element
    indices ``index`` (int64) at ``step``, one tensor per entry of ``parts`` (MOMENTUM, PARAM, ...),
    each word the parts use drawn once."""
    flat = index.reshape(-1)
    out = [torch.empty(flat.shape, dtype=torch.int64, device=index.device) for _ in parts]
    for start in range(0, flat.numel(), CHUNK):
        chunk = flat[start:start + CHUNK]
        words = {k: rounding_words_at(seed, step, chunk, k) for k in sorted({part >> 1 for part in parts})}
        for o, part in zip(out, parts):
            o[start:start + CHUNK] = (words[part >> 1] >> (16 * (part & 1))) & 0xFFFF
    return [o.view(index.shape) for o in out]


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


def stochastic_round_bf16(x: torch.Tensor, seed: int, step: int, offset: int, part: int = PARAM) -> torch.Tensor:
    """``x`` (float32), the new value of a tensor whose first element has global index ``offset``,
    rounded stochastically to bfloat16 at ``step`` with the bits of ``part`` (the reference's call)."""
    index = torch.arange(offset, offset + x.numel(), dtype=torch.int64, device=x.device).view(x.shape)
    return round_bf16_with(x, rounding_bits_at(seed, step, index, (part,))[0])


def rounding_bits_multi(seed: int, step: int, offsets, numels, parts, device) -> list[list[torch.Tensor]]:
    """The draws of several tensors at one step (``numels`` elements from global index ``offsets``),
    made in one vectorised pass: for each entry of ``parts``, one flat int64 tensor per tensor (the
    foreach backend's call)."""
    if not numels:
        return [[] for _ in parts]
    index = torch.cat([torch.arange(o, o + n, dtype=torch.int64, device=device) for o, n in zip(offsets, numels)])
    return [list(r.split(list(numels))) for r in rounding_bits_at(seed, step, index, parts)]


def stochastic_round_bf16_multi(xs, seed: int, step: int, offsets, part: int = PARAM) -> list[torch.Tensor]:
    """``stochastic_round_bf16`` of several tensors at one step, their draws made in one pass."""
    if not xs:
        return []
    (bits,) = rounding_bits_multi(seed, step, offsets, [x.numel() for x in xs], (part,), xs[0].device)
    return [round_bf16_with(x, r.view(x.shape)) for x, r in zip(xs, bits)]
