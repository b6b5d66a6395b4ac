// The code of one 8-bit blockwise state value in O(1) (docs/kernel-contract.md, "8-bit blockwise
// state"): the same code as the contract's count `c = #{k < 255 : P[k] < x}` over a block's
// products P[k] = fl(T[k] * s) (T a row of decision points, s >= 0 the block's scale), bit for bit,
// for every float32 x. Plain functions over float and uint32, for the CPU kernel's builds and,
// later, the CUDA kernel.
//
// The guess. A table per code-book row, built once from the row's float32 points (it does not
// depend on the scale), is indexed by the bucket of an approximate ratio r = fl(x * fl(1 / s)): the
// sign, the float exponent in [kBucketMinExponent, kBucketMaxExponent) and the top
// kBucketMantissaBits bits of the mantissa (|r| below the range falls in the first bucket, above it
// or NaN in the last). Its entry g counts the points below the bucket, widened by a relative margin
// of kBucketMargin for the roundings of r and of the products. Both books have at most one point in
// any widened bucket (7 mantissa bits: the top decade of the dynamic book and the linear book's
// steps are wider than a bucket), so the count is g or g + 1 wherever the roundings are that small:
// c = g + [P[g] < x].
//
// The proof, per element. Since P is sorted (s >= 0, rounding is monotone), a guess c equals the
// count iff P[c - 1] < x <= P[c] (P[-1] = -inf, P[255] = +inf). So c = g + [P[g] < x] is the count
// iff P[g - 1] < x and x <= P[g + 1]; where either compare fails (a denormal scale or value, whose
// products and ratio carry fewer bits; a point left out of the bucket), the code is the contract's
// 8-step binary search instead. Either way the answer is the count; the bucket only decides how
// fast it comes. tests/test_blockwise_codes.py checks every float32 x against the count for many
// scales, and how often the search runs (never for scales of 2^-100 and above).
//
// The points sit in CodeRow::points padded: points[0] = NaN stands for T[-1] (its product is NaN, and
// no x fails `!(NaN >= x)`), points[1 + k] = T[k], then +inf for T[255] and T[256] (products +inf,
// as the scale is > 0 here: a block of scale 0 has the codes of zero_scale_code). Each product is
// formed where it is compared, `points[i] * s`, the same float32 number as the contract's.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"

namespace noisefuse {

constexpr int kBucketMantissaBits = 7;
constexpr int kBucketMinExponent = -25;  // below the smallest nonzero point of both books (1e-7 ~ 2^-23.3)
constexpr int kBucketMaxExponent = 1;    // r < 2: every point is at most 1
constexpr int kBucketsPerSign = (kBucketMaxExponent - kBucketMinExponent) << kBucketMantissaBits;  // 3328
constexpr int kBucketBias = (127 + kBucketMinExponent) << kBucketMantissaBits;  // the first bucket's index
constexpr double kBucketMargin = 1.0 / (1 << 18);  // relative; the roundings are about 3 * 2^-24
constexpr int kPaddedPoints = 264;  // NaN, T[0..254], +inf ...: room for a 16-byte load at index 255

// One decision row of a code book, as the O(1) decision reads it: built once per book
// (build_code_row), independent of any scale. Plain data, the same type in every build.
struct CodeRow {
  alignas(64) float points[kPaddedPoints];
  uint8_t buckets[2 * kBucketsPerSign];  // g of each bucket: positive ratios, then negative ones
  // Per bucket, what a guess reads: T[g - 1], T[g], T[g + 1] and g's bits (one 16-byte load; the CPU
  // kernel's vector path; 104 KB, of which the buckets of a block's values are a few KB).
  alignas(64) float records[2 * kBucketsPerSign][4];
};

inline namespace NF_ISA_NS {

C10_HOST_DEVICE inline uint32_t blockwise_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

C10_HOST_DEVICE inline float blockwise_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// The table index of ratio r (both signs; NaN and |r| >= 2^kBucketMaxExponent in the last bucket).
C10_HOST_DEVICE inline int code_bucket(float r) {
  const uint32_t u = blockwise_float_bits(r);
  const int32_t q = static_cast<int32_t>((u & 0x7fffffffu) >> (23 - kBucketMantissaBits)) - kBucketBias;
  const int32_t clamped = q < 0 ? 0 : (q > kBucketsPerSign - 1 ? kBucketsPerSign - 1 : q);
  return clamped + ((u >> 31) ? kBucketsPerSign : 0);
}

// The contract's search: `c = 0; for w = 128 ... 1: c += T[c + w - 1] * s < x ? w : 0` (x not NaN).
C10_HOST_DEVICE inline int code_by_search(const CodeRow& row, float s, float x) {
  int c = 0;
  for (int w = 128; w >= 1; w >>= 1) c += row.points[c + w] * s < x ? w : 0;
  return c;
}

// Whether the bucket's guess is the count; the guess in *code either way (x not NaN, s > 0).
C10_HOST_DEVICE inline bool code_by_bucket(const CodeRow& row, float s, float inverse_scale, float x, int* code) {
  const int g = row.buckets[code_bucket(x * inverse_scale)];
  *code = g + (row.points[g + 1] * s < x ? 1 : 0);
  return !(row.points[g] * s >= x) && row.points[g + 2] * s >= x;
}

// The code of x (NaN counts as 0) in a block of scale s > 0 whose inverse_scale is 1 / s (rounded in
// any way, even 0 or inf: only the speed depends on it).
C10_HOST_DEVICE inline uint8_t nearest_code(const CodeRow& row, float s, float inverse_scale, float x) {
  if (x != x) x = 0.f;
  int c;
  if (!code_by_bucket(row, s, inverse_scale, x, &c)) c = code_by_search(row, s, x);
  return static_cast<uint8_t>(c);
}

// The code of x in a block of scale 0: every product is +-0, so the count is 255 for x > 0, else 0.
C10_HOST_DEVICE inline uint8_t zero_scale_code(float x) { return x > 0.f ? 255 : 0; }

// Fills `row` from its 255 float32 decision points (sorted). Returns the most points any widened
// bucket holds: 1 for both books (more would only cost searches).
inline int build_code_row(const float* points, CodeRow* row) {
  row->points[0] = blockwise_bits_float(0x7fc00000u);  // NaN
  for (int k = 0; k < 255; ++k) row->points[1 + k] = points[k];
  for (int k = 256; k < kPaddedPoints; ++k) row->points[k] = blockwise_bits_float(0x7f800000u);  // +inf
  const auto below = [&](double bound) {  // #{k : T[k] < bound}
    int n = 0;
    while (n < 255 && static_cast<double>(points[n]) < bound) ++n;
    return n;
  };
  const auto magnitude = [](int q) {  // the smallest |r| of bucket q (of either sign)
    const uint32_t bits = static_cast<uint32_t>(q + kBucketBias) << (23 - kBucketMantissaBits);
    return static_cast<double>(blockwise_bits_float(bits));
  };
  const double inf = std::numeric_limits<double>::infinity();
  const double tiny = 1e-300;  // widens the first bucket's 0 to either side
  int most = 0;
  for (int negative = 0; negative < 2; ++negative) {
    for (int q = 0; q < kBucketsPerSign; ++q) {
      const double lo = q == 0 ? 0.0 : magnitude(q);
      const double hi = q == kBucketsPerSign - 1 ? inf : magnitude(q + 1);
      const double a = negative ? -hi : lo, b = negative ? -lo : hi;  // r in [a, b]
      const double wide_a = a - std::fabs(a) * kBucketMargin - tiny;
      const double wide_b = b + std::fabs(b) * kBucketMargin + tiny;
      const int start = below(wide_a);
      int inside = 0;
      for (int k = start; k < 255 && static_cast<double>(points[k]) <= wide_b; ++k) ++inside;
      const int bucket = negative * kBucketsPerSign + q;
      row->buckets[bucket] = static_cast<uint8_t>(start);
      for (int i = 0; i < 3; ++i) row->records[bucket][i] = row->points[start + i];
      row->records[bucket][3] = blockwise_bits_float(static_cast<uint32_t>(start));
      most = inside > most ? inside : most;
    }
  }
  return most;
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
