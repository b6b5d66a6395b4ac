// 8-bit blockwise state for the CPU kernel (docs/kernel-contract.md, "8-bit blockwise state"): one
// block's codes to float32 and back. Per block of n elements with scale s (IEEE float32, to nearest):
//   dequantize   m = S[c] * s                  v = r * r with r = U[c] * s
//   quantize     s' = max |x| over the finite x (0 if none);  x = 0 where NaN
//                c' = #{k < 255 : T[k] * s' < x}   (T: Ms momentum, Mu sqrt(v), U sqrt(vmax))
// c' is the branchless binary search `c = 0; for w = 128 ... 1: c += T[c + w - 1] * s' < x ? w : 0`
// over the block's products T[k] * s' (sorted as T is, since s' >= 0), formed once per block. Only
// products and comparisons: the codes are the same bits in every build and on every backend, given
// the same float32 x. The AVX2 build runs the lookups and the search on 8 lanes (quantize_block); the
// baseline build, and the AVX2 build's last few elements of a tensor, run the same steps per element.
// Included by fused_step_cpu_kernel.h inside its per-ISA namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX2__) && defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define NF_BLOCKWISE_AVX2 1
#endif

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {
namespace {

// Rows of the code_books table (noisefuse/state/maps.py): values and nearest decision points of the
// signed book, then of the unsigned one.
enum CodeBookRow : int { kSignedValues = 0, kSignedPoints = 1, kUnsignedValues = 2, kUnsignedPoints = 3 };
constexpr int kNumCodes = 256;  // a uint8 code

// The search of one element against the block's 255 products (entry 255 is never read).
inline uint8_t code_of(const float* thresholds, float x) {
  int c = 0;
  for (int w = 128; w >= 1; w >>= 1) c += thresholds[c + w - 1] < x ? w : 0;
  return static_cast<uint8_t>(c);
}

// out[j] = values[codes[j]] * scale, or its square with `kSquared` (v from its stored sqrt).
template <bool kSquared>
inline void dequantize_block(const uint8_t* codes, const float* values, float scale, int64_t n, float* out) {
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  const __m256 s = _mm256_set1_ps(scale);
  for (; j + 8 <= n; j += 8) {
    const __m256i index = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + j)));
    __m256 x = _mm256_mul_ps(_mm256_i32gather_ps(values, index, 4), s);
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

// Writes the block's scale and the codes of its n new values x against decision points `points`
// (a row of the code books).
inline void quantize_block(const float* x, int64_t n, const float* points, float* scale, uint8_t* codes) {
  const float s = finite_absmax(x, n);
  *scale = s;
  alignas(64) float thresholds[kNumCodes];
  for (int k = 0; k < kNumCodes - 1; ++k) thresholds[k] = points[k] * s;
  int64_t j = 0;
#if defined(NF_BLOCKWISE_AVX2)
  // The search's first kBroadcastSteps steps (w = 128, 64, ...) only ever read the products
  // T[kStride * q - 1], q = 1 ... kTops, and leave c = kStride * #{q : T[kStride * q - 1] * s' < x}
  // (the predicate is monotone in the index): that count comes from compares against those
  // products broadcast, with no gather and no chain of dependent loads. The last steps gather, each
  // lane at its own index, for kChains vectors at a time: each gather waits for the one before it
  // in its vector, so independent vectors side by side keep the gather unit busy.
  constexpr int kBroadcastSteps = 4;
  constexpr int kTops = (1 << kBroadcastSteps) - 1;
  constexpr int kStrideBits = 8 - kBroadcastSteps;  // 256 codes: 8 steps in all
  constexpr int kStride = 1 << kStrideBits;
  constexpr int kChains = 4;
  alignas(32) float tops[kTops][8];
  for (int q = 0; q < kTops; ++q) _mm256_store_ps(tops[q], _mm256_set1_ps(thresholds[kStride * (q + 1) - 1]));
  const auto search = [&](int64_t at, auto vectors) {  // `vectors`: how many, a compile-time constant
    constexpr int chains = decltype(vectors)::value;
    __m256 v[chains];
    __m256i c[chains];
    for (int k = 0; k < chains; ++k) {
      v[k] = _mm256_loadu_ps(x + at + 8 * k);
      v[k] = _mm256_and_ps(v[k], _mm256_cmp_ps(v[k], v[k], _CMP_ORD_Q));  // NaN -> +0
      c[k] = _mm256_setzero_si256();
    }
    for (int q = 0; q < kTops; ++q) {  // vectors side by side here too: their sums are independent
      const __m256 top = _mm256_load_ps(tops[q]);
      for (int k = 0; k < chains; ++k) {  // a true compare is all ones: -1
        c[k] = _mm256_sub_epi32(c[k], _mm256_castps_si256(_mm256_cmp_ps(top, v[k], _CMP_LT_OQ)));
      }
    }
    for (int k = 0; k < chains; ++k) c[k] = _mm256_slli_epi32(c[k], kStrideBits);
    for (int w = kStride / 2; w >= 1; w >>= 1) {
      for (int k = 0; k < chains; ++k) {
        const __m256 t = _mm256_i32gather_ps(thresholds + (w - 1), c[k], 4);
        const __m256i below = _mm256_castps_si256(_mm256_cmp_ps(t, v[k], _CMP_LT_OQ));
        c[k] = _mm256_add_epi32(c[k], _mm256_and_si256(below, _mm256_set1_epi32(w)));
      }
    }
    // 8 codes < 256 a vector: int32 -> uint16 -> uint8 lanes, saturating packs that saturate nothing.
    for (int k = 0; k < chains; ++k) {
      const __m128i half = _mm_packus_epi32(_mm256_castsi256_si128(c[k]), _mm256_extracti128_si256(c[k], 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + at + 8 * k), _mm_packus_epi16(half, half));
    }
  };
  for (; j + 8 * kChains <= n; j += 8 * kChains) search(j, std::integral_constant<int, kChains>{});
  for (; j + 8 <= n; j += 8) search(j, std::integral_constant<int, 1>{});
#endif
  for (; j < n; ++j) codes[j] = code_of(thresholds, std::isnan(x[j]) ? 0.f : x[j]);
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
