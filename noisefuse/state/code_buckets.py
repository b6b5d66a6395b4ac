r"""The O(1) nearest 8-bit code's tables for the kernels that take them as a tensor (the Triton
backend): the same decision as the native kernels' (csrc/include/noisefuse/blockwise_codes.h, which
explains it), built here from the code books' float32 points.

For a block of scale :math:`s > 0`, the code of :math:`x` is the count
:math:`c = \#\{k < 255 : T_k s < x\}`. A table indexed by the bucket of :math:`r = x \cdot (1/s)`
(its sign, float exponent in [-25, 1) and top 7 mantissa bits) gives :math:`g`, the number of points
below the bucket widened by a relative :math:`2^{-18}`; then :math:`c = g + [T_g s < x]`, which is
the count exactly when :math:`T_{g-1} s < x \le T_{g+1} s` (the points are sorted and rounding is
monotone). For :math:`s \in [2^{-100}, 2^{126}]` (``GUESS_MIN_SCALE``, ``GUESS_MAX_SCALE``) that holds
for every :math:`x`, as the roundings there are far inside the margin (blockwise_codes.h, "Without
the proof"), so the guess is the code as it is; in a block of any other scale (denormal ones, 0)
the kernel runs the contract's binary search instead: the table decides only how fast the answer
comes, never what it is.

``decision_table(code_books)`` is one float32 tensor: the ``[4, 256]`` books (``maps.tables``), then
per row its points padded as ``[NaN, T_0 .. T_254, +inf x 9]`` (so ``T_{g-1}, T_g, T_{g+1}`` are
entries ``g, g + 1, g + 2``), then per row the bucket starts ``g`` (exact small integers).
"""
from __future__ import annotations

import torch

from . import maps

MANTISSA_BITS = 7
MIN_EXPONENT, MAX_EXPONENT = -25, 1
BUCKETS_PER_SIGN = (MAX_EXPONENT - MIN_EXPONENT) << MANTISSA_BITS  # 3328
BUCKET_BIAS = (127 + MIN_EXPONENT) << MANTISSA_BITS
MARGIN = 2.0 ** -18  # relative: the roundings of r and of the products are about 3 * 2^-24
GUESS_MIN_SCALE, GUESS_MAX_SCALE = 2.0 ** -100, 2.0 ** 126  # the scales whose guesses are the counts
PADDED_POINTS = 264
ROWS = 4
PADDED_BASE = ROWS * maps.NUM_CODES                    # where the padded points start
BUCKETS_BASE = PADDED_BASE + ROWS * PADDED_POINTS      # where the bucket starts start
TABLE_SIZE = BUCKETS_BASE + ROWS * 2 * BUCKETS_PER_SIGN


def _bucket_magnitudes() -> torch.Tensor:
    """float64 [BUCKETS_PER_SIGN + 1]: the smallest |r| of each bucket (0 for the first), +inf after the last."""
    q = torch.arange(BUCKETS_PER_SIGN + 1, dtype=torch.int64)
    bits = ((q + BUCKET_BIAS) << (23 - MANTISSA_BITS)).to(torch.int32)
    magnitudes = bits.view(torch.float32).double()
    magnitudes[0] = 0.0
    magnitudes[-1] = float("inf")
    return magnitudes


def bucket_starts(points: torch.Tensor) -> torch.Tensor:
    """int64 [2 * BUCKETS_PER_SIGN]: per bucket (positive ratios, then negative), how many of the 255
    sorted float32 ``points`` lie below its widened range."""
    p = points.double().contiguous()
    edges = _bucket_magnitudes()
    lo, hi = edges[:-1], edges[1:]
    tiny = 1e-300  # widens the first bucket's 0 to either side
    starts = []
    for a in (lo, -hi):  # r in [lo, hi), then r in (-hi, -lo]
        wide = a - a.abs() * MARGIN - tiny
        starts.append(torch.searchsorted(p, wide, right=False))
    return torch.cat(starts)


def decision_table(code_books: torch.Tensor) -> torch.Tensor:
    """The float32 table of the module docstring, on ``code_books``' device."""
    books = code_books.detach().to("cpu", torch.float32).reshape(ROWS, maps.NUM_CODES)
    padded = torch.full((ROWS, PADDED_POINTS), float("inf"))
    padded[:, 0] = float("nan")
    padded[:, 1:maps.NUM_CODES] = books[:, :maps.NUM_CODES - 1]
    starts = torch.stack([bucket_starts(books[row, :maps.NUM_CODES - 1]) for row in range(ROWS)]).float()
    table = torch.cat([books.reshape(-1), padded.reshape(-1), starts.reshape(-1)])
    assert table.numel() == TABLE_SIZE
    return table.to(code_books.device)
