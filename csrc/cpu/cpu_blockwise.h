// 8-bit blockwise state for the CPU kernel (docs/kernel-contract.md, "8-bit blockwise state"): one
// block's codes to float32 and back. Per block of n elements with scale s (IEEE float32, to nearest):
//   dequantize   m = S[c] * s                  v = r * r with r = U[c] * s
//   quantize     s' = max |x| over the finite x (0 if none);  x = 0 where NaN
//                c' = #{k < 255 : T[k] * s' < x}   (T: Ms momentum, Mu sqrt(v), U sqrt(vmax))
// c' comes in O(1) from noisefuse/blockwise_codes.h: a table lookup by the bucket of x / s' guesses
// it, two compares against the block's products T[k] * s' (formed where compared) prove it, and the
// contract's 8-step binary search decides the rare value whose guess fails. Only products and
// comparisons decide: the codes are the same bits in every build and on every backend, given the
// same float32 x. The AVX2 build runs them on 8 lanes (dequantize_block, encode_block); the
// baseline build, and the AVX2 build's last few elements of a tensor, run the same steps per element.
// Included by fused_step_cpu_kernel.h inside its per-ISA namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "noisefuse/blockwise_codes.h"

#if defined(__AVX2__) && defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define NF_BLOCKWISE_AVX2 1
#endif

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {
namespace {

// out[j] = values[codes[j]] * scale, or its square with `kSquared` (v from its stored sqrt).
template <bool kSquared>
inline void dequantize_block(const uint8_t* codes, const float* values, float scale, int64_t n, float* out) {
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  const __m256 s = _mm256_set1_ps(scale);
  for (; j + 8 <= n; j += 8) {
    // Eight scalar loads, not a vgatherdps: about 3x cheaper on the Zen 4 VM (encode_block).
    const uint8_t* c = codes + j;
    __m256 x = _mm256_mul_ps(_mm256_setr_ps(values[c[0]], values[c[1]], values[c[2]], values[c[3]], values[c[4]],
                                            values[c[5]], values[c[6]], values[c[7]]),
                             s);
    if (kSquared) x = _mm256_mul_ps(x, x);
    _mm256_storeu_ps(out + j, x);
  }
#endif
  for (; j < n; ++j) {
    const float x = values[codes[j]] * scale;
    out[j] = kSquared ? x * x : x;
  }
}

// x[j] = sqrt_rn(x[j]): what the second moments store. Correctly rounded in both builds
// (vsqrtps; std::sqrt without fast math).
inline void sqrt_in_place(float* x, int64_t n) {
  using FVec = at::vec::Vectorized<float>;
  int64_t j = 0;
  for (; j + FVec::size() <= n; j += FVec::size()) FVec::loadu(x + j).sqrt().store(x + j);
  for (; j < n; ++j) x[j] = std::sqrt(x[j]);
}

// The largest finite |x[j]| (0 if none): a max, the same value in any order. NaN and +-inf fail
// `|x| <= FLT_MAX` and count as 0.
inline float finite_absmax(const float* x, int64_t n) {
  using FVec = at::vec::Vectorized<float>;
  const FVec zero(0.f), largest(std::numeric_limits<float>::max());
  FVec acc = zero;
  int64_t j = 0;
  for (; j + FVec::size() <= n; j += FVec::size()) {
    const FVec a = FVec::loadu(x + j).abs();
    acc = at::vec::maximum(acc, FVec::blendv(zero, a, a <= largest));
  }
  alignas(64) float lanes[FVec::size()];
  acc.store(lanes);
  float top = 0.f;
  for (int l = 0; l < FVec::size(); ++l) top = lanes[l] > top ? lanes[l] : top;
  for (; j < n; ++j) {
    const float a = std::fabs(x[j]);
    if (a <= std::numeric_limits<float>::max() && a > top) top = a;
  }
  return top;
}

// The codes of the block's n values x against a decision row of the code books (CodeRow,
// noisefuse/blockwise_codes.h), for the block's scale s: an O(1) guess per value, checked by two
// exact compares, with the search where the check fails. The AVX2 build runs it on 8 lanes; the
// baseline build, and the AVX2 build's last few elements, per element (nearest_code).
inline void encode_block(const float* x, int64_t n, const CodeRow& row, float s, uint8_t* codes) {
  if (s == 0.f) {  // every product is +-0 (a block of zeros, or only NaN and infinities)
    for (int64_t j = 0; j < n; ++j) codes[j] = zero_scale_code(x[j]);
    return;
  }
  const float inverse = 1.f / s;
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  // Per 8 lanes: the buckets by vector ops; then per lane one 16-byte load of its bucket's record
  // (T[g - 1], T[g], T[g + 1], g), transposed into vectors, the points multiplied by s. Plain loads:
  // on the Zen 4 VM a vgatherdps costs about 3x the loads and shuffles that replace it.
  const __m256 s_v = _mm256_set1_ps(s), inverse_v = _mm256_set1_ps(inverse);
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), bias = _mm256_set1_epi32(kBucketBias);
  const __m256i zero = _mm256_setzero_si256(), last = _mm256_set1_epi32(kBucketsPerSign - 1);
  const __m256i negative_half = _mm256_set1_epi32(kBucketsPerSign);
  const char* records = reinterpret_cast<const char*>(row.records);
  const auto record = [&](uint32_t offset) { return _mm_load_ps(reinterpret_cast<const float*>(records + offset)); };
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> +0
    // code_bucket on 8 lanes.
    const __m256i r = _mm256_castps_si256(_mm256_mul_ps(v, inverse_v));
    __m256i q = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_and_si256(r, magnitude), 23 - kBucketMantissaBits), bias);
    q = _mm256_min_epi32(_mm256_max_epi32(q, zero), last);
    q = _mm256_add_epi32(q, _mm256_and_si256(_mm256_srai_epi32(r, 31), negative_half));
    // The records' byte offsets, two lanes to a 64-bit extract (fewer uops than one vpextrd a lane).
    const __m256i offsets = _mm256_slli_epi32(q, 4);
    const __m128i low = _mm256_castsi256_si128(offsets), high = _mm256_extracti128_si256(offsets, 1);
    const uint64_t o01 = _mm_cvtsi128_si64(low), o23 = _mm_extract_epi64(low, 1);
    const uint64_t o45 = _mm_cvtsi128_si64(high), o67 = _mm_extract_epi64(high, 1);
    const auto first = [](uint64_t pair) { return static_cast<uint32_t>(pair); };
    const auto second = [](uint64_t pair) { return static_cast<uint32_t>(pair >> 32); };
    const __m256 q0 = _mm256_insertf128_ps(_mm256_castps128_ps256(record(first(o01))), record(first(o45)), 1);
    const __m256 q1 = _mm256_insertf128_ps(_mm256_castps128_ps256(record(second(o01))), record(second(o45)), 1);
    const __m256 q2 = _mm256_insertf128_ps(_mm256_castps128_ps256(record(first(o23))), record(first(o67)), 1);
    const __m256 q3 = _mm256_insertf128_ps(_mm256_castps128_ps256(record(second(o23))), record(second(o67)), 1);
    const __m256 t0 = _mm256_unpacklo_ps(q0, q1), t1 = _mm256_unpackhi_ps(q0, q1);
    const __m256 t2 = _mm256_unpacklo_ps(q2, q3), t3 = _mm256_unpackhi_ps(q2, q3);
    const __m256 below = _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0x44), s_v);  // P[g - 1]
    const __m256 at = _mm256_mul_ps(_mm256_shuffle_ps(t0, t2, 0xee), s_v);     // P[g]
    const __m256 above = _mm256_mul_ps(_mm256_shuffle_ps(t1, t3, 0x44), s_v);  // P[g + 1]
    const __m256i g = _mm256_castps_si256(_mm256_shuffle_ps(t1, t3, 0xee));
    // code_by_bucket: c = g + [P[g] < x], right iff P[g - 1] < x <= P[g + 1].
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(at, v, _CMP_LT_OQ));  // true: all ones, -1
    const int wrong = _mm256_movemask_ps(
        _mm256_or_ps(_mm256_cmp_ps(below, v, _CMP_GE_OQ), _mm256_cmp_ps(above, v, _CMP_LT_OQ)));
    // 8 codes < 256: int32 -> uint16 -> uint8 lanes, saturating packs that saturate nothing.
    const __m256i c = _mm256_sub_epi32(g, up);
    const __m128i half = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + j), _mm_packus_epi16(half, half));
    if (wrong != 0) {
      for (int l = 0; l < 8; ++l) {
        if (wrong & (1 << l)) codes[j + l] = nearest_code(row, s, inverse, x[j + l]);
      }
    }
  }
#endif
  for (; j < n; ++j) codes[j] = nearest_code(row, s, inverse, x[j]);
}

// Writes the block's scale and the codes of its n new values x (encode_block).
inline void quantize_block(const float* x, int64_t n, const CodeRow& row, float* scale, uint8_t* codes) {
  const float s = finite_absmax(x, n);
  *scale = s;
  encode_block(x, n, row, s, codes);
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
