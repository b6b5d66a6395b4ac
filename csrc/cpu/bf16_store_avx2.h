// Stores of 8 float32 lanes as bfloat16 in the AVX2 build of the CPU kernel, with the same integer
// steps as the scalar conversions, hence the same bits: to nearest (c10::BFloat16's
// round_to_nearest_even: NaN as 0x7FC0) and stochastically (bf16_rounding.h's
// stochastic_bf16_bits). at::vec's conversion converts two float vectors at a time: bfloat16 state
// of float32 params has one per vector, and converting it twice over made the state's stores half
// the cost of its step. Included by fused_step_cpu_kernel.h inside its per-ISA namespace.
#pragma once

#if defined(__AVX2__) && defined(CPU_CAPABILITY_AVX2)
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

#define NF_BF16_STORE_AVX2 1

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {
namespace {

// The 8 bfloat16 bit patterns (each below 2^16 in a 32-bit lane) packed into dst.
inline void store_bf16_lanes(c10::BFloat16* dst, __m256i bits) {
  // packus narrows each 128-bit half (twice over): quadwords 0 and 2 hold the 8 lanes in order.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
}

// dst[l] = x[l] rounded to the nearest bfloat16, ties to even; NaN as 0x7FC0.
inline void nearest_bf16_store8(c10::BFloat16* dst, __m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  store_bf16_lanes(dst, _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan));
}

// dst[l] = stochastic_bf16_bits(x[l], half kHalf of word[l]).
template <int kHalf>
inline void stochastic_bf16_store8(c10::BFloat16* dst, __m256 x, const uint32_t* word) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word));
  const __m256i r = kHalf != 0 ? _mm256_srli_epi32(w, 16) : _mm256_and_si256(w, _mm256_set1_epi32(0xFFFF));
  const __m256i exponent = _mm256_set1_epi32(0x7F800000);
  const __m256i magnitude = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, r), 16);
  const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(u, exponent), exponent);  // inf or NaN
  const __m256i nan = _mm256_cmpgt_epi32(magnitude, exponent);  // both non-negative as int32
  const __m256i kept = _mm256_blendv_epi8(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x7FC0), nan);
  store_bf16_lanes(dst, _mm256_blendv_epi8(rounded, kept, special));
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
#endif
