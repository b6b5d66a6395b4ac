"""The 8-bit code books of blockwise state (docs/kernel-contract.md, "8-bit blockwise state").

A code book is 256 float32 values in [-1, 1] (signed, for momentum) or [0, 1] (unsigned, for the
square root of the second moment), sorted ascending, and holding 1 (and -1 when signed) exactly,
so that a block's largest element is stored without error. A code ``c`` of a block whose scale is
``s`` means ``values[c] * s``. The kernels never compute a code book: they read these tables, so
every backend quantizes against the very same float32 numbers.

Two books of each sign:

- ``"dynamic"``: dynamic tree quantization (Dettmers, 2016; bitsandbytes' 8-bit optimizers). The
  bits after the sign spell a decimal exponent ``e`` in unary (``e`` leading zeros, then a one)
  and a linear fraction in the rest, so decade ``(10^-(e+1), 10^-e]`` gets ``2^(k-e)`` evenly
  spaced values (``k`` = 6 signed, 7 unsigned): fine steps near the largest values, and values
  down to 1e-6 (signed) or 1e-7 (unsigned) of the block's maximum instead of flushing them to 0.
- ``"linear"``: evenly spaced values (steps of 1/127 signed, 1/255 unsigned).
"""
from __future__ import annotations

import functools

import torch

MAPS = ("dynamic", "linear")
NUM_CODES = 256


def _decades(fraction_bits: int) -> list[float]:
    """The positive values of a dynamic book whose first decade has ``2**fraction_bits`` values."""
    values = []
    for e in range(fraction_bits + 1):
        steps = 2 ** (fraction_bits - e)
        values += [10.0**-e * (0.1 + 0.9 * j / steps) for j in range(1, steps + 1)]
    return values


def code_book(kind: str, signed: bool) -> list[float]:
    """The 256 values of book ``kind`` (MAPS), ascending, as float64 before their float32 rounding."""
    if kind == "dynamic":
        positive = _decades(6 if signed else 7)  # 127 or 255 values in (0, 1]
    elif kind == "linear":
        positive = [j / 127 for j in range(1, 128)] if signed else [j / 255 for j in range(1, 256)]
    else:
        raise ValueError(f"unknown code book {kind!r} (choose from {', '.join(MAPS)})")
    values = sorted([-x for x in positive] + [0.0] + positive) if signed else [0.0] + sorted(positive)
    if signed:
        values.append(1.0)  # the 256th code repeats 1: unused but by +inf, which saturates there
    assert len(values) == NUM_CODES
    return values


@functools.lru_cache(maxsize=None)
def _tables_cpu(kind: str) -> torch.Tensor:
    rows = []
    for signed in (True, False):
        values = torch.tensor(code_book(kind, signed), dtype=torch.float64).float()
        # Nearest: a value goes to the code whose value is nearest, the lower one on a tie; the
        # decision points are the float32 midpoints of neighbouring values. Unsigned books put
        # their first decision point at 0 instead: a positive value is never stored as 0 (an
        # exploding m / sqrt(v), Li et al. 2023), it goes to the smallest positive code at least.
        mids = ((values[:-1].double() + values[1:].double()) / 2).float()
        if not signed:
            mids[0] = 0.0
        rows += [values, torch.cat([mids, torch.tensor([float("inf")])])]
    return torch.stack(rows).contiguous()


# Rows of ``tables()``.
SIGNED_VALUES, SIGNED_MIDPOINTS, UNSIGNED_VALUES, UNSIGNED_MIDPOINTS = range(4)


def tables(kind: str, device=None) -> torch.Tensor:
    """float32 [4, 256]: the signed book's values and nearest decision points, then the unsigned
    book's (rows SIGNED_VALUES...); the last decision point of each is +inf (never read). Rounding up
    (an amsgrad maximum) decides against the unsigned values themselves."""
    t = _tables_cpu(kind)
    return t if device is None or torch.device(device).type == "cpu" else _tables_on(kind, torch.device(device))


@functools.lru_cache(maxsize=None)
def _tables_on(kind: str, device: torch.device) -> torch.Tensor:
    return _tables_cpu(kind).to(device)
