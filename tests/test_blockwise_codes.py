"""The CPU kernel's O(1) 8-bit code decision (csrc/include/noisefuse/blockwise_codes.h) against the
contract's count ``c = #{k < 255 : fl(T[k] * s) < x}`` (docs/kernel-contract.md, "8-bit blockwise
state"), for float32 bit patterns x: every finite x in [-s, s], +-inf and NaNs, for every decision
row (Ms, Mu, U) of both code books, in both ISA builds.

``torch.ops.noisefuse._blockwise_codes_check`` (csrc/cpu/blockwise_check_op.cpp) runs a build's
``encode_block`` (the kernel's own code: 8 lanes in the AVX2 build, ``nearest_code`` per element in the
baseline build) over a range of patterns and compares each code with the count, walked over the
products in the order of the patterns; it also counts the guesses that failed their exact check (the
binary search decided them: never for a normal scale) and reports the most decision points any
widened bucket holds (1: the guess is g or g + 1).

The normal suite checks s = 1 exhaustively in the build this CPU runs (6 sweeps of 2^31 + 8
patterns: 19-22 s each on the 2-vCPU Zen 4 VM, 2 threads, at a load of 5-8 from other jobs,
2026-12-07; about 2 minutes in all) and every 4099th pattern at 28 scales in both builds (0.3-0.5 s
per row, book and build). ``NOISEFUSE_EXHAUSTIVE_SCALES=N`` adds the first N of: scale 0, three
denormal scales, the smallest normal one, FLT_MAX, then random normal scales, every pattern, in both
builds (up to 2^32 patterns a scale). With N = 6 (the special scales, FLT_MAX's 2^32 patterns the
most of it) the AVX2 build took 18-44 s per row and book at a load of 3-4; with N = 8 (two random
scales more) the baseline build took 114-123 s per row and book at a load of 2-3."""
from __future__ import annotations

import os
import random
import struct

import pytest
import torch

from noisefuse.backends import native
from noisefuse.state import code_buckets, maps

pytestmark = pytest.mark.skipif(not native.available(torch.device("cpu")),
                                reason=f"native extension not built: {native.load_error()}")

ROWS = {"Ms": maps.SIGNED_MIDPOINTS, "Mu": maps.UNSIGNED_MIDPOINTS, "U": maps.UNSIGNED_VALUES}
CASES = [(book, row) for book in maps.MAPS for row in ROWS]
SIGN = 0x80000000
NON_FINITE = (0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF)  # +-inf, NaNs
ONE = 0x3F800000
FLT_MAX = 0x7F7FFFFF
SMALLEST_NORMAL = 0x00800000
# Products T[k] * s of the smallest nonzero point (1e-7) are normal from here on: no search needed.
NO_SEARCH_FROM = 0x0D800000  # 2^-100
# The scales whose guesses the kernels take without their proof (GUESS_MIN_SCALE, GUESS_MAX_SCALE):
# [2^-100, 2^126], and the patterns beside either end.
GUESS_FIRST, GUESS_LAST = 0x0D800000, 0x7E800000
GUESS_EDGES = [GUESS_FIRST - 1, GUESS_FIRST, GUESS_FIRST + 1, GUESS_LAST - 1, GUESS_LAST, GUESS_LAST + 1]


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def has_avx2() -> bool:
    if native.load_error() is not None:
        return False  # the module's tests that need the op skip; this one's answer is not read
    try:
        torch.ops.noisefuse._blockwise_codes_check(maps.tables("linear"), 1, ONE, 0, 0, 1, True)
    except RuntimeError:
        return False
    return True


def isas():
    return [True, False] if has_avx2() else [False]


def check(book: str, row: str, scale_bits: int, stride: int, avx2: bool):
    """(patterns, wrong codes, searches, most points per bucket) over [-s, s] and the non-finite x."""
    op, books = torch.ops.noisefuse._blockwise_codes_check, maps.tables(book)
    total = [0, 0, 0, 0]
    ranges = [(0, scale_bits), (SIGN, SIGN | scale_bits)] + [(u, u) for u in NON_FINITE]
    for first, last in ranges:
        n, wrong, searched, most = op(books, ROWS[row], scale_bits, first, last, stride, avx2).tolist()
        total = [total[0] + n, total[1] + wrong, total[2] + searched, most]
    return total


def patterns(scale_bits: int, stride: int) -> int:
    return 2 * (scale_bits // stride + 1) + len(NON_FINITE)


@pytest.mark.parametrize("book,row", CASES)
def test_every_pattern_at_scale_one(book, row):
    """The build this CPU runs, every pattern of [-1, 1]: no wrong code and no search."""
    avx2 = isas()[0]
    assert check(book, row, ONE, 1, avx2) == [patterns(ONE, 1), 0, 0, 1]


@pytest.mark.parametrize("avx2", isas(), ids=lambda a: "avx2" if a else "baseline")
@pytest.mark.parametrize("book,row", CASES)
def test_strided_patterns_at_many_scales(book, row, avx2):
    """Scale 1, 20 random normal scales, 0, denormal ones, the smallest normal and FLT_MAX, both
    ends of the range where the guess alone decides and their neighbours, every 4099th pattern (a
    prime stride: every mantissa and exponent field is visited). Where the products are normal no
    guess needs the search; denormal scales and tiny products may."""
    rng = random.Random(f"{book}-{row}")
    scales = [ONE, 0, 1, 0x00000007, 0x00400000, 0x007FFFFF, SMALLEST_NORMAL, FLT_MAX] + GUESS_EDGES
    scales += [rng.randrange(SMALLEST_NORMAL, FLT_MAX + 1) for _ in range(20)]
    for s in scales:
        n, wrong, searched, most = check(book, row, s, 4099, avx2)
        assert (n, wrong, most) == (patterns(s, 4099), 0, 1), f"scale bits {s:#010x}"
        if s >= NO_SEARCH_FROM or s == 0:
            assert searched == 0, f"scale bits {s:#010x}: {searched} searches"


def test_the_premises_of_the_unproved_guess():
    """What blockwise_codes.h's argument for taking the guess without its proof at scales in
    [2^-100, 2^126] rests on, for every decision row of both books: every nonzero point is at least
    2^-24 in magnitude (its product with the scale is normal), none above 1, and the kernels' bounds
    are the Python ones."""
    assert (code_buckets.GUESS_MIN_SCALE, code_buckets.GUESS_MAX_SCALE) == (2.0 ** -100, 2.0 ** 126)
    assert (bits(code_buckets.GUESS_MIN_SCALE), bits(code_buckets.GUESS_MAX_SCALE)) == (GUESS_FIRST, GUESS_LAST)
    for book in maps.MAPS:
        for row in ROWS.values():
            points = maps.tables(book)[row, :255].abs()
            assert float(points[points > 0].min()) >= 2.0 ** -24 and float(points.max()) <= 1.0, (book, row)


def exhaustive_scales() -> list[int]:
    count = int(os.environ.get("NOISEFUSE_EXHAUSTIVE_SCALES", "0"))
    rng = random.Random(22)
    special = [0, 1, 0x00000007, 0x007FFFFF, SMALLEST_NORMAL, FLT_MAX]
    return (special + [rng.randrange(SMALLEST_NORMAL, FLT_MAX + 1) for _ in range(count)])[:count]


@pytest.mark.slow
@pytest.mark.skipif(not exhaustive_scales(), reason="set NOISEFUSE_EXHAUSTIVE_SCALES=N for N scales, every pattern")
@pytest.mark.parametrize("avx2", isas(), ids=lambda a: "avx2" if a else "baseline")
@pytest.mark.parametrize("book,row", CASES)
def test_every_pattern_at_many_scales(book, row, avx2):
    for s in exhaustive_scales():
        n, wrong, searched, most = check(book, row, s, 1, avx2)
        assert (n, wrong, most) == (patterns(s, 1), 0, 1), f"scale bits {s:#010x}"
        if s >= NO_SEARCH_FROM or s == 0:
            assert searched == 0, f"scale bits {s:#010x}: {searched} searches"

