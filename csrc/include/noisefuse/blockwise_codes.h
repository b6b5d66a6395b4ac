// The code of one 8-bit blockwise state value in O(1) (docs/kernel-contract.md, "8-bit blockwise
// state"): the same code as the contract's count `c = #{k < 255 : P[k] < x}` over a block's
// products P[k] = fl(T[k] * s) (T a row of decision points, s >= 0 the block's scale), bit for bit,
// for every float32 x. Plain functions over float and uint32, for the CPU kernel's builds and the
// CUDA kernel (fused_step_blockwise.cuh, whose rows live in shared memory: the functions take any
// `Row` with indexable `points` and `buckets`).
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
// iff P[g - 1] < x and x <= P[g + 1] (one of which the choice of c already proved: code_by_bucket
// checks the other); where either compare fails (a denormal scale or value, whose
// products and ratio carry fewer bits; a point left out of the bucket), the code is the contract's
// 8-step binary search instead. Either way the answer is the count; the bucket only decides how
// fast it comes. tests/test_blockwise_codes.py checks every float32 x against the count for many
// scales, and how often the search runs (never for scales of 2^-100 and above).
//
// Without the proof. For a scale s in [2^-100, 2^126] the guess is the count for every float32 x
// (code_by_guess; guesses_are_counts): there the roundings are as small as the margin assumes.
// (1 / s is normal, so r = fl(x * fl(1 / s)) is x / s within a relative 2^-21 whenever r is normal; a
// subnormal or zero r lies in the first bucket of its sign, as x / s does; an infinite r in the last,
// as x / s does. Every product T[k] * s is zero or normal, as every nonzero |T[k]| >= 1e-7 > 2^-24,
// so within a relative 2^-24 of T[k] * s. The margin, 2^-18, exceeds both together: a point below
// the widened bucket has its product below x, one above it its product above x, and the one point
// the widened bucket may hold, T[g], is decided by the exact compare.) The exhaustive sweeps of
// tests/test_blockwise_codes.py, at s = 1 and at sampled scales, are the check of this argument.
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

// The [kCodeBookRows, kNumCodes] float32 code-book table (noisefuse/state/maps.py, tables()), one
// value per uint8 code: the rows are the values and nearest decision points of the signed book, then
// of the unsigned one. The CPU and CUDA kernels read it by these rows.
enum CodeBookRow : int { kSignedValues = 0, kSignedPoints = 1, kUnsignedValues = 2, kUnsignedPoints = 3 };
constexpr int kCodeBookRows = 4;
constexpr int kNumCodes = 256;

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
  // Per bucket, what a guess without its proof reads (guesses_are_counts): T[g] and g's bits (one
  // 8-byte load; 52 KB).
  alignas(64) float guesses[2 * kBucketsPerSign][2];
};

// The scales whose guesses need no proof (above: "Without the proof").
constexpr float kGuessMinScale = 0x1p-100f;
constexpr float kGuessMaxScale = 0x1p126f;

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
template <typename Row>
C10_HOST_DEVICE inline int code_by_search(const Row& row, float s, float x) {
  int c = 0;
  for (int w = 128; w >= 1; w >>= 1) c += row.points[c + w] * s < x ? w : 0;
  return c;
}

// Whether the bucket's guess is the count; the guess in *code either way (x not NaN, s > 0). The
// guess c = g + [P[g] < x] is the count iff P[c - 1] < x <= P[c]; the choice of c proved one side,
// so one more product proves the other: x <= P[g + 1] when c = g + 1, P[g - 1] < x when c = g
// (the same verdict as checking both P[g - 1] < x and x <= P[g + 1], as P is sorted).
template <typename Row>
C10_HOST_DEVICE inline bool code_by_bucket(const Row& row, float s, float inverse_scale, float x, int* code) {
  const int g = row.buckets[code_bucket(x * inverse_scale)];
  const bool up = row.points[g + 1] * s < x;  // P[g] < x
  *code = g + (up ? 1 : 0);
  const float other = row.points[up ? g + 2 : g] * s;  // P[g + 1], or P[g - 1] (NaN for g = 0)
  return (other >= x) == up;
}

// Whether code_by_guess is the count for every x in a block of scale s (NaN: false).
C10_HOST_DEVICE inline bool guesses_are_counts(float s) { return s >= kGuessMinScale && s <= kGuessMaxScale; }

// The bucket's guess g + [P[g] < x], the count where guesses_are_counts(s) and inverse_scale is 1 / s
// within 2 ulp (x not NaN).
template <typename Row>
C10_HOST_DEVICE inline int code_by_guess(const Row& row, float s, float inverse_scale, float x) {
  const int g = row.buckets[code_bucket(x * inverse_scale)];
  return g + (row.points[g + 1] * s < x ? 1 : 0);
}

// The code of x (NaN counts as 0) in a block of scale s > 0 whose inverse_scale is 1 / s (rounded in
// any way, even 0 or inf: only the speed depends on it).
template <typename Row>
C10_HOST_DEVICE inline uint8_t nearest_code(const Row& row, float s, float inverse_scale, float x) {
  if (x != x) x = 0.f;
  int c;
  if (!code_by_bucket(row, s, inverse_scale, x, &c)) c = code_by_search(row, s, x);
  return static_cast<uint8_t>(c);
}

// The code of x in a block of scale 0: every product is +-0, so the count is 255 for x > 0, else 0.
C10_HOST_DEVICE inline uint8_t zero_scale_code(float x) { return x > 0.f ? 255 : 0; }

// Entry j of CodeRow::points from a row's 255 sorted points: NaN for T[-1], T[j - 1], then +inf (the
// host's rows and the CUDA kernel's shared-memory rows alike).
C10_HOST_DEVICE inline float padded_point(const float* points, int j) {
  if (j == 0) return blockwise_bits_float(0x7fc00000u);  // NaN
  return j < 256 ? points[j - 1] : blockwise_bits_float(0x7f800000u);  // +inf
}

// The range [a, b] of the ratios of bucket `bucket` (0 <= bucket < 2 * kBucketsPerSign), widened
// by the relative margin for the roundings (float64: exact for these bounds, the same on the host
// and the device).
C10_HOST_DEVICE inline void bucket_range(int bucket, double* a, double* b) {
  const bool negative = bucket >= kBucketsPerSign;
  const int q = negative ? bucket - kBucketsPerSign : bucket;
  const auto magnitude = [](int k) {  // the smallest |r| of bucket k (of either sign)
    return static_cast<double>(blockwise_bits_float(static_cast<uint32_t>(k + kBucketBias) << (23 - kBucketMantissaBits)));
  };
  const double lo = q == 0 ? 0.0 : magnitude(q);
  const double hi = q == kBucketsPerSign - 1 ? HUGE_VAL : magnitude(q + 1);
  const double tiny = 1e-300;  // widens the first bucket's 0 to either side
  const double low = negative ? -hi : lo, high = negative ? -lo : hi;
  *a = low - fabs(low) * kBucketMargin - tiny;
  *b = high + fabs(high) * kBucketMargin + tiny;
}

// g of a bucket: #{k < 255 : T[k] < a}, its widened range's lower end, over the 255 sorted float32
// points (a binary search; CodeRow::buckets on the host, the CUDA kernel's device table).
C10_HOST_DEVICE inline int bucket_start(const float* points, int bucket) {
  double a, b;
  bucket_range(bucket, &a, &b);
  int lo = 0, hi = 255;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (static_cast<double>(points[mid]) < a) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Fills `row` from its 255 float32 decision points (sorted). Returns the most points any widened
// bucket holds: 1 for both books (more would only cost searches).
inline int build_code_row(const float* points, CodeRow* row) {
  for (int j = 0; j < kPaddedPoints; ++j) row->points[j] = padded_point(points, j);
  int most = 0;
  for (int bucket = 0; bucket < 2 * kBucketsPerSign; ++bucket) {
    double a, b;
    bucket_range(bucket, &a, &b);
    const int start = bucket_start(points, bucket);
    int inside = 0;
    for (int k = start; k < 255 && static_cast<double>(points[k]) <= b; ++k) ++inside;
    row->buckets[bucket] = static_cast<uint8_t>(start);
    for (int i = 0; i < 3; ++i) row->records[bucket][i] = row->points[start + i];
    row->records[bucket][3] = blockwise_bits_float(static_cast<uint32_t>(start));
    row->guesses[bucket][0] = row->points[start + 1];
    row->guesses[bucket][1] = row->records[bucket][3];
    most = inside > most ? inside : most;
  }
  return most;
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
