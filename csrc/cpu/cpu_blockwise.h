// 8-bit blockwise state for the CPU kernel (docs/kernel-contract.md, "8-bit blockwise state"): one
// block's codes to float32 and back. Per block of n elements with scale s (IEEE float32, to nearest):
//   dequantize   m = S[c] * s                  v = r * r with r = U[c] * s
//   quantize     s' = max |x| over the finite x (0 if none);  x = 0 where NaN
//                c' = #{k < 255 : T[k] * s' < x}   (T: Ms momentum, Mu sqrt(v), U sqrt(vmax))
// c' comes in O(1) from noisefuse/blockwise_codes.h: a table lookup by the bucket of x / s' guesses
// it with one compare against a product T[k] * s' (formed where compared); for scales outside
// [2^-100, 2^126] two more compares prove it, and the contract's 8-step binary search decides the
// rare value whose guess fails. Only products and
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

#if defined(NF_BLOCKWISE_AVX2)
// The bucket indices (code_bucket) of the 8 ratios r, as 32-bit lanes.
inline __m256i code_buckets8(__m256 r) {
  const __m256i u = _mm256_castps_si256(r);
  __m256i q = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                                 23 - kBucketMantissaBits),
                               _mm256_set1_epi32(kBucketBias));
  q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_setzero_si256()), _mm256_set1_epi32(kBucketsPerSign - 1));
  return _mm256_add_epi32(q, _mm256_and_si256(_mm256_srai_epi32(u, 31), _mm256_set1_epi32(kBucketsPerSign)));
}

// The 8 lanes' offsets as four 64-bit pairs (lane 2k low, 2k + 1 high): fewer uops than a vpextrd a
// lane.
struct LanePairs {
  uint64_t pair[4];  // lanes (0, 1), (2, 3), (4, 5), (6, 7)
  uint32_t operator[](int lane) const { return static_cast<uint32_t>(pair[lane / 2] >> (32 * (lane % 2))); }
};

inline LanePairs lane_pairs(__m256i offsets) {
  const __m128i low = _mm256_castsi256_si128(offsets), high = _mm256_extracti128_si256(offsets, 1);
  return LanePairs{{static_cast<uint64_t>(_mm_cvtsi128_si64(low)), static_cast<uint64_t>(_mm_extract_epi64(low, 1)),
                    static_cast<uint64_t>(_mm_cvtsi128_si64(high)), static_cast<uint64_t>(_mm_extract_epi64(high, 1))}};
}

// Stores 8 codes < 256 held in 32-bit lanes: int32 -> uint16 -> uint8, packs that saturate nothing.
inline void store_codes8(__m256i c, uint8_t* out) {
  const __m128i half = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(half, half));
}
#endif

// encode_block where guesses_are_counts(s): per value the bucket's guess g + [P[g] < x], nothing
// to prove. On 8 lanes: one 8-byte load per lane of its bucket's (T[g], g), two lanes to a 128-bit
// half, split into vectors by two shuffles.
inline void encode_by_guesses(const float* x, int64_t n, const CodeRow& row, float s, float inverse, uint8_t* codes) {
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  const __m256 s_v = _mm256_set1_ps(s), inverse_v = _mm256_set1_ps(inverse);
  const char* guesses = reinterpret_cast<const char*>(row.guesses);
  const auto two = [&](const LanePairs& o, int lane) {  // lanes `lane` and `lane + 1`: [T, g, T, g]
    const __m128d first = _mm_load_sd(reinterpret_cast<const double*>(guesses + o[lane]));
    return _mm_castpd_ps(_mm_loadh_pd(first, reinterpret_cast<const double*>(guesses + o[lane + 1])));
  };
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> +0
    const LanePairs o = lane_pairs(_mm256_slli_epi32(code_buckets8(_mm256_mul_ps(v, inverse_v)), 3));
    const __m256 q01 = _mm256_insertf128_ps(_mm256_castps128_ps256(two(o, 0)), two(o, 4), 1);  // lanes 0 1 | 4 5
    const __m256 q23 = _mm256_insertf128_ps(_mm256_castps128_ps256(two(o, 2)), two(o, 6), 1);  // lanes 2 3 | 6 7
    const __m256 at = _mm256_mul_ps(_mm256_shuffle_ps(q01, q23, 0x88), s_v);  // P[g]
    const __m256i g = _mm256_castps_si256(_mm256_shuffle_ps(q01, q23, 0xdd));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(at, v, _CMP_LT_OQ));  // true: all ones, -1
    store_codes8(_mm256_sub_epi32(g, up), codes + j);
  }
#endif
  for (; j < n; ++j) codes[j] = static_cast<uint8_t>(code_by_guess(row, s, inverse, x[j] != x[j] ? 0.f : x[j]));
}

// encode_block at any other scale s > 0: each guess proved by two compares, the search where the
// proof fails. On 8 lanes: one 16-byte load per lane of its bucket's record (T[g - 1], T[g],
// T[g + 1], g), transposed into vectors, the points multiplied by s. Plain loads: on the Zen 4 VM a
// vgatherdps costs about 3x the loads and shuffles that replace it.
inline void encode_by_proved_guesses(const float* x, int64_t n, const CodeRow& row, float s, float inverse,
                                     uint8_t* codes) {
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  const __m256 s_v = _mm256_set1_ps(s), inverse_v = _mm256_set1_ps(inverse);
  const char* records = reinterpret_cast<const char*>(row.records);
  const auto record = [&](uint32_t offset) { return _mm_load_ps(reinterpret_cast<const float*>(records + offset)); };
  const auto two = [&](const LanePairs& o, int low, int high) {  // lane `low`'s record | lane `high`'s
    return _mm256_insertf128_ps(_mm256_castps128_ps256(record(o[low])), record(o[high]), 1);
  };
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> +0
    const LanePairs o = lane_pairs(_mm256_slli_epi32(code_buckets8(_mm256_mul_ps(v, inverse_v)), 4));
    const __m256 q0 = two(o, 0, 4), q1 = two(o, 1, 5), q2 = two(o, 2, 6), q3 = two(o, 3, 7);
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
    store_codes8(_mm256_sub_epi32(g, up), codes + j);
    if (wrong != 0) {
      for (int l = 0; l < 8; ++l) {
        if (wrong & (1 << l)) codes[j + l] = nearest_code(row, s, inverse, x[j + l]);
      }
    }
  }
#endif
  for (; j < n; ++j) codes[j] = nearest_code(row, s, inverse, x[j]);
}

// The codes of the block's n values x against a decision row of the code books (CodeRow,
// noisefuse/blockwise_codes.h), for the block's scale s: an O(1) guess per value, which at the
// scales of guesses_are_counts is the count as it is, and elsewhere is checked by two exact
// compares, with the search where the check fails. The AVX2 build runs it on 8 lanes; the baseline
// build, and the AVX2 build's last few elements, per element.
inline void encode_block(const float* x, int64_t n, const CodeRow& row, float s, uint8_t* codes) {
  if (s == 0.f) {  // every product is +-0 (a block of zeros, or only NaN and infinities)
    for (int64_t j = 0; j < n; ++j) codes[j] = zero_scale_code(x[j]);
    return;
  }
  const float inverse = 1.f / s;
  if (guesses_are_counts(s)) encode_by_guesses(x, n, row, s, inverse, codes);
  else encode_by_proved_guesses(x, n, row, s, inverse, codes);
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
