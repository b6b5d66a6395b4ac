"""Philox4x32-10 in vectorised torch: the reference of the one random stream (SPEC.md section 5).

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011)
maps a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` to four 32-bit words with
ten rounds of

.. code-block:: text

    (hi0, lo0) = mulhilo(M0, c0);  (hi1, lo1) = mulhilo(M1, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

and a Weyl bump of the key between rounds (``k0 += W0, k1 += W1`` mod 2^32, before rounds 2..10).
The same generator is written in C++ (``csrc/include/noisefuse/philox.h``, CPU and CUDA) and in
Triton (``philox_triton.py``); the integer outputs are identical bit for bit, which the tests check
against Random123's published known-answer vectors.

uint32 arithmetic is emulated exactly in int64 tensors: every word is held in ``[0, 2^32)`` and the
32x32 -> 64-bit product is split on the 16-bit halves of the counter word, so no int64 operation
overflows (signed overflow is undefined behaviour in the C++ kernels torch would run).

Conversions, identical on every backend:

- uniform:  ``u = (x >> 8) * 2^-24`` (exact in float32, in ``[0, 1)``);
- normal:   Box-Muller on the first two words of one Philox call,
  ``xi = sqrt(-2 * log(max(u(x0), 2^-24))) * cos(float32(2 pi) * u(x1))``, all in float32.
  The sine half of Box-Muller is **not** used, and neither are ``x2``/``x3``: one counter gives one
  normal, so the normal of an element never depends on which elements are drawn beside it.
"""
from __future__ import annotations

import torch

# Salmon et al. 2011 (also Random123's PHILOX_M4x32_0/1 and PHILOX_W32_0/1).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF

# Purpose tags: the fourth counter word, so that streams drawn for different purposes never overlap.
TAG_ISOTROPIC = 1  # per-element N(0, 1) of nf.noise.Isotropic
TAG_DIAG_FISHER = 2  # per-element N(0, 1) of nf.noise.DiagFisher
TAG_WEIGHTS = 3  # per-sample draws of nf.noise.Multiplicative / loss_weights
TAG_ROUNDING = 4  # stochastic rounding to bfloat16, its word 0; word 1 is drawn under 5 (rounding.py)

TWO_PI_F32 = 6.2831854820251465  # float32(2 pi); the product with u is rounded to float32
UNIFORM_SCALE = 2.0**-24  # also the lower clamp of u before the log

# Elements drawn per vectorised pass; keeps the int64 temporaries of huge tensors bounded.
CHUNK = 1 << 22


def split_seed(seed: int) -> tuple[int, int]:
    """The key ``(k0, k1) = (lo32(seed), hi32(seed))`` of a seed in ``[0, 2^64)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return seed & MASK32, seed >> 32


def seed_as_int64(seed: int) -> int:
    """``seed`` reinterpreted as a signed 64-bit int (how op schemas, whose ``int`` is int64, take it)."""
    split_seed(seed)
    return seed - 2**64 if seed >= 2**63 else seed


def _mulhilo(m: int, c):
    """(hi32, lo32) of the 64-bit product ``m * c`` for a constant ``m`` and words ``c`` < 2^32 (an int64
    tensor, or an int)."""
    a = (c & 0xFFFF) * m  # < 2^48
    b = (c >> 16) * m  # < 2^48; the product is b * 2^16 + a
    s = a + ((b & 0xFFFF) << 16)  # < 2^49
    return (b >> 16) + (s >> 32), s & MASK32


def _word(c):
    """A counter word as the rounds take it: an int stays a Python int (exact, and passed to torch as a
    kernel argument, never copied to a device as a tensor of its own), a tensor becomes int64."""
    return c.to(torch.int64) if torch.is_tensor(c) else c


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = ROUNDS):
    """Philox4x32-``rounds`` of the counter words (int64 tensors or ints in ``[0, 2^32)``, broadcast
    together) under the key ``(k0, k1)``; returns the four output words as int64 tensors.

    Int words are computed on as ints until a round mixes them with a tensor word (after at most four
    rounds every word depends on every input). So a draw whose only tensors are on the device, such
    as a step counter read there, makes no host-to-device copy and can be captured in a CUDA graph."""
    words = [_word(c) for c in (c0, c1, c2, c3)]
    device = next((c.device for c in words if torch.is_tensor(c)), None)
    c0, c1, c2, c3 = words
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return tuple(torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64, device=device)
                                           for c in (c0, c1, c2, c3))))


def uniform(x: torch.Tensor) -> torch.Tensor:
    """``u = (x >> 8) * 2^-24`` as float32, in ``[0, 1)`` (exact: 24 significant bits)."""
    return (x >> 8).to(torch.float32) * UNIFORM_SCALE


def box_muller(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """One N(0, 1) float32 per pair of words: ``sqrt(-2 log(max(u0, 2^-24))) * cos(2 pi u1)``."""
    u0 = torch.clamp_min(uniform(x0), UNIFORM_SCALE)
    radius = torch.sqrt(-2.0 * torch.log(u0))
    return radius * torch.cos(uniform(x1) * TWO_PI_F32)


def element_counters(index: torch.Tensor, step: int, tag: int):
    """Counters ``(lo32(i), hi32(i), lo32(t), tag)`` of the global element indices ``index`` (int64)."""
    return index & MASK32, (index >> 32) & MASK32, step & MASK32, tag


def weight_counters(batch_size: int, step, device=None):
    """Counters ``(b, 0, lo32(t), TAG_WEIGHTS)`` of the samples ``b = 0 .. batch_size-1``.

    ``step`` is an int, or a 0-d tensor holding one (a step counter read on its device, of any dtype:
    it is truncated to int64 as ``int()`` truncates, and moved to ``device``); both give the same
    counters."""
    b = torch.arange(batch_size, dtype=torch.int64, device=device)
    if torch.is_tensor(step):
        step = step.to(device=b.device, dtype=torch.int64)
    return b, 0, step & MASK32, TAG_WEIGHTS


def normals_at(seed: int, step: int, tag: int, index: torch.Tensor) -> torch.Tensor:
    """float32 N(0, 1) of the global element indices ``index`` (int64, any shape) at ``step`` for ``tag``.

    A pure function of (seed, step, tag, global index): drawing elements in pieces, in another
    order, or as part of a larger set gives exactly the same number for each."""
    k0, k1 = split_seed(seed)
    flat = index.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.float32, device=index.device)
    for start in range(0, flat.numel(), CHUNK):
        x0, x1, _, _ = philox4x32(*element_counters(flat[start:start + CHUNK], step, tag), k0, k1)
        out[start:start + CHUNK] = box_muller(x0, x1)
    return out.view(index.shape)


def element_normals(seed: int, step: int, tag: int, offset: int, numel: int, device=None) -> torch.Tensor:
    """``normals_at`` of the contiguous global range ``offset .. offset+numel-1``."""
    if offset < 0 or numel < 0 or offset + numel > 2**63:
        raise ValueError(f"element range [{offset}, {offset + numel}) is outside [0, 2**63)")
    return normals_at(seed, step, tag, torch.arange(offset, offset + numel, dtype=torch.int64, device=device))


def element_normals_multi(seed: int, step: int, tag: int, offsets, numels, device=None) -> list[torch.Tensor]:
    """``element_normals`` of several ranges with one vectorised pass (the foreach backend's draw)."""
    index = torch.cat([torch.arange(o, o + n, dtype=torch.int64, device=device) for o, n in zip(offsets, numels)]
                      or [torch.empty(0, dtype=torch.int64, device=device)])
    return list(normals_at(seed, step, tag, index).split(list(numels)))


def weight_words(seed: int, step, batch_size: int, device=None):
    """The first two Philox words ``(x0, x1)`` of each sample's weight counter at ``step`` (an int or a
    0-d tensor, as in ``weight_counters``)."""
    k0, k1 = split_seed(seed)
    x0, x1, _, _ = philox4x32(*weight_counters(batch_size, step, device), k0, k1)
    return x0, x1
