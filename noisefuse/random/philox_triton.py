"""Philox4x32-10 as ``@triton.jit`` functions, for the Triton kernels (SPEC.md section 5).

The same generator, counters and conversions as ``philox.py`` (the torch reference, whose docstring
has the algorithm) and ``csrc/include/noisefuse/philox.h``; integer outputs are identical bit for
bit. Triton's own ``tl.randn``/``tl.philox`` are deliberately not used: their counter layout and
conversions are Triton's to change between versions.

Inside a kernel:

.. code-block:: python

    xi = element_normal(seed_lo, seed_hi, step, TAG, index)   # index: int64 global element indices

All words are ``tl.uint32``: ``tl.umulhi`` gives the high half of the 32x32 product, ``*`` the low
half (wrapping), and ``+`` wraps the key bump mod 2^32.

The two small kernels at the bottom exist for the tests (bit-identity with the torch reference,
under ``TRITON_INTERPRET=1`` on the CPU); the fused step kernels call the jit functions directly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .philox import split_seed

# Constexpr objects, not annotations (`X: tl.constexpr = ...`): compiled kernels may read only the
# former; the interpreter accepts both.
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
UNIFORM_SCALE = tl.constexpr(5.9604644775390625e-08)  # 2^-24
TWO_PI_F32 = tl.constexpr(6.2831854820251465)  # float32(2 pi)


@triton.jit
def _round(c0, c1, c2, c3, k0, k1):
    m0 = tl.full(c0.shape, PHILOX_M0, tl.uint32)
    m1 = tl.full(c0.shape, PHILOX_M1, tl.uint32)
    hi0 = tl.umulhi(m0, c0)
    lo0 = m0 * c0
    hi1 = tl.umulhi(m1, c2)
    lo1 = m1 * c2
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of uint32 counter words (same shape) under the uint32 key ``(k0, k1)``."""
    w0 = tl.full(c0.shape, PHILOX_W0, tl.uint32)
    w1 = tl.full(c0.shape, PHILOX_W1, tl.uint32)
    k0 = tl.full(c0.shape, 0, tl.uint32) + k0
    k1 = tl.full(c0.shape, 0, tl.uint32) + k1
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    for _ in tl.static_range(9):
        k0 = k0 + w0
        k1 = k1 + w1
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    return c0, c1, c2, c3


@triton.jit
def uniform(x):
    """``(x >> 8) * 2^-24`` as float32 (``x`` uint32, so the shift is logical)."""
    return (x >> 8).to(tl.float32) * UNIFORM_SCALE


@triton.jit
def box_muller(x0, x1):
    """One N(0, 1) per pair of words, cosine half only (as every backend)."""
    u0 = tl.maximum(uniform(x0), UNIFORM_SCALE)
    radius = tl.sqrt_rn(-2.0 * tl.log(u0))
    return radius * tl.cos(uniform(x1) * TWO_PI_F32)


@triton.jit
def element_normal(seed_lo, seed_hi, step, tag, index):
    """The normal of the int64 global element indices ``index``: counter
    ``(lo32(index), hi32(index), lo32(step), tag)``, key ``(seed_lo, seed_hi)``."""
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.full(index.shape, 0, tl.uint32)
    c2 = zero + step.to(tl.uint32)  # integer -> uint32 keeps the low 32 bits: lo32(step)
    c3 = zero + tag.to(tl.uint32)
    x0, x1, _, _ = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    return box_muller(x0, x1)


@triton.jit
def rounding_word(seed_lo, seed_hi, step, tag, index):
    """Rounding word (uint32) of the int64 global element indices ``index`` whose Philox tag is
    ``tag`` (``TAG_ROUNDING + k`` for word ``k``): output word ``index & 3`` of Philox at the group
    counter ``(lo32(index >> 2), hi32(index >> 2), lo32(step), tag)``. Word 0 rounds the momentum
    (``& 0xFFFF``) and the second moment (``>> 16``), word 1 the param and the amsgrad maximum, as
    ``noisefuse.random.rounding``. A tile of a tensor may start anywhere in a group, so each element
    evaluates its group itself (the native kernels share one evaluation between four)."""
    group = index >> 2
    c0 = (group & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((group >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = tl.full(index.shape, 0, tl.uint32)
    c2 = zero + step.to(tl.uint32)
    c3 = zero + tag.to(tl.uint32)
    x0, x1, x2, x3 = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    lane = index & 3
    return tl.where(lane < 2, tl.where(lane == 0, x0, x1), tl.where(lane == 2, x2, x3))


@triton.jit
def _words_kernel(ctr_ptr, out_ptr, n, seed_lo, seed_hi, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < n
    c0 = tl.load(ctr_ptr + 4 * rows, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(ctr_ptr + 4 * rows + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(ctr_ptr + 4 * rows + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(ctr_ptr + 4 * rows + 3, mask=mask, other=0).to(tl.uint32)
    x0, x1, x2, x3 = philox4x32_10(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    tl.store(out_ptr + 4 * rows, x0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * rows + 1, x1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * rows + 2, x2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * rows + 3, x3.to(tl.int64), mask=mask)


@triton.jit
def _normal_kernel(out_ptr, offset, n, seed_lo, seed_hi, step, tag, BLOCK: tl.constexpr):
    local = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = local < n
    xi = element_normal(seed_lo, seed_hi, step, tag, offset + local)
    tl.store(out_ptr + local, xi, mask=mask)


def philox_words(counters: torch.Tensor, seed: int, block: int = 256) -> torch.Tensor:
    """Philox4x32-10 of int64 ``[N, 4]`` counters (uint32 values) -> int64 ``[N, 4]`` words."""
    counters = counters.contiguous()
    out = torch.empty_like(counters)
    n = counters.shape[0]
    k0, k1 = split_seed(seed)
    if n:
        _words_kernel[(triton.cdiv(n, block),)](counters, out, n, k0, k1, BLOCK=block)
    return out


def element_normals(seed: int, step: int, tag: int, offset: int, numel: int, device, block: int = 256):
    """Triton twin of ``philox.element_normals`` (``offset + numel`` must stay below 2^63)."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    k0, k1 = split_seed(seed)
    if numel:
        _normal_kernel[(triton.cdiv(numel, block),)](out, offset, numel, k0, k1, step & 0xFFFFFFFF, tag,
                                                     BLOCK=block)
    return out
