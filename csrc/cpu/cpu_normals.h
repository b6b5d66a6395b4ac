// Per-element draws for the CPU kernel, a block of lanes at a time: normals (docs/kernel-contract.md,
// "Noise") and stochastic-rounding bits ("Mixed precision"). Normals: Philox, then Box-Muller's
// log, sqrt and cos on at::vec vectors (Sleef's functions in the AVX2 build, the C library's in
// the baseline one). The integer words equal philox::philox4x32_10's bit
// for bit; the normals equal torch's to the float32 rounding of log and cos.
//
// Philox4x32-10, two forms:
// - AVX2 build: explicit intrinsics. Each counter word of 4 lanes sits in the low half of the four
//   64-bit slots of a __m256i, so one vpmuludq gives the 4 full 32x32->64 products: lo is the slot
//   itself (its upper half is don't-care: vpmuludq and the final pack read only low halves), hi one
//   64-bit shift away. A round is 2 multiplies, 2 shifts and 4 xors per 4 lanes, no shuffles; 16
//   lanes (4 independent chains) go through the rounds together to hide the multiply latency. Only
//   x0 and x1 are packed into 32-bit lanes at the end.
// - baseline build: philox_round over arrays of counters, plain loops over lanes.
// Included by fused_step_cpu_kernel.h inside its per-ISA namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#if defined(__AVX2__) && defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#define NF_PHILOX_AVX2 1
#endif

#include "noisefuse/philox.h"

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {
namespace {

// Lanes drawn per call: a whole number of float vectors.
template <int kWanted>
constexpr int normal_lanes() {
  constexpr int width = at::vec::Vectorized<float>::size();
  return (kWanted + width - 1) / width * width;
}

// out[l] = radius * cos(u1 * 2 pi), radius = sqrt(-2 log u0), on whole float vectors.
template <int kLanes>
inline void box_muller_lanes(const float* u0, const float* u1, float* out) {
  using FVec = at::vec::Vectorized<float>;
  const FVec minus_two(-2.0f), two_pi(philox::kTwoPi);
  for (int l = 0; l < kLanes; l += FVec::size()) {
    const FVec radius = (minus_two * FVec::loadu(u0 + l).log()).sqrt();
    (radius * (FVec::loadu(u1 + l) * two_pi).cos()).store(out + l);
  }
}

#if defined(NF_PHILOX_AVX2)

// Philox4x32-10 of the 16 counters (lo32(index0 + l), hi32(index0 + l), lo32(step), tag),
// l = 0..15; x0[g], x1[g] receive the first two output words of lanes 8g..8g+7, in lane order.
inline void philox16_avx2(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, __m256i x0[2],
                          __m256i x1[2]) {
  constexpr int kChains = 4;  // vectors of 4 lanes
  // Chain c holds lanes {0,1,4,5} + 2 * (c & 1) + 8 * (c >> 1): the pack below (one in-lane
  // shuffle and one blend per 8 lanes) then lands every word in its lane without a cross-lane move.
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(index0));
  __m256i c0[kChains], c1[kChains], c2[kChains], c3[kChains];
  const __m256i step_lo = _mm256_set1_epi64x(static_cast<uint32_t>(step));
  const __m256i tag_v = _mm256_set1_epi64x(tag);
  for (int c = 0; c < kChains; ++c) {
    const long long first = 2 * (c & 1) + 8 * (c >> 1);
    c0[c] = _mm256_add_epi64(base, _mm256_setr_epi64x(first, first + 1, first + 4, first + 5));
    c1[c] = _mm256_srli_epi64(c0[c], 32);  // hi32 of the 64-bit index (the add carries into it)
    c2[c] = step_lo;
    c3[c] = tag_v;
  }
  const __m256i m0 = _mm256_set1_epi64x(philox::kM0);
  const __m256i m1 = _mm256_set1_epi64x(philox::kM1);
  const uint32_t seed_lo = static_cast<uint32_t>(seed), seed_hi = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    const philox::RoundKey key = philox::round_key(seed_lo, seed_hi, r);
    const __m256i key0 = _mm256_set1_epi64x(key.k0);
    const __m256i key1 = _mm256_set1_epi64x(key.k1);
    for (int c = 0; c < kChains; ++c) {
      const __m256i p0 = _mm256_mul_epu32(c0[c], m0);  // M0 * c0, 64-bit
      const __m256i p1 = _mm256_mul_epu32(c2[c], m1);  // M1 * c2, 64-bit
      c0[c] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[c]), key0);
      c1[c] = p1;
      c2[c] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[c]), key1);
      c3[c] = p0;
    }
  }
  // Low halves of chains (2g, 2g+1) into the 8 lanes of group g: chain 2g holds lanes {0,1,4,5}
  // and chain 2g+1 lanes {2,3,6,7} (+ 8g) in its 64-bit slots.
  for (int g = 0; g < 2; ++g) {
    const __m256i a0 = _mm256_shuffle_epi32(c0[2 * g], 0x88), b0 = _mm256_shuffle_epi32(c0[2 * g + 1], 0x88);
    const __m256i a1 = _mm256_shuffle_epi32(c1[2 * g], 0x88), b1 = _mm256_shuffle_epi32(c1[2 * g + 1], 0x88);
    x0[g] = _mm256_blend_epi32(a0, b0, 0xCC);
    x1[g] = _mm256_blend_epi32(a1, b1, 0xCC);
  }
}

// u = (x >> 8) * 2^-24 for 8 lanes (exact in float32).
inline __m256 uniform8(__m256i x) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 8)), _mm256_set1_ps(philox::kUniformScale));
}

#else  // baseline build

// Philox4x32-10 of the counters (lo32(index0 + l), hi32(index0 + l), lo32(step), tag), l < kLanes,
// one round over every lane at a time (a loop the compiler vectorises); x0, x1 get the first two
// output words.
template <int kLanes>
void philox_lanes(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, uint32_t* x0, uint32_t* x1) {
  alignas(64) uint32_t c2[kLanes], c3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t index = index0 + static_cast<uint64_t>(l);
    x0[l] = static_cast<uint32_t>(index);
    x1[l] = static_cast<uint32_t>(index >> 32);
    c2[l] = static_cast<uint32_t>(step);
    c3[l] = tag;
  }
  const uint32_t seed_lo = static_cast<uint32_t>(seed), seed_hi = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    const philox::RoundKey key = philox::round_key(seed_lo, seed_hi, r);
    for (int l = 0; l < kLanes; ++l) philox::philox_round(x0[l], x1[l], c2[l], c3[l], key.k0, key.k1);
  }
}

#endif  // NF_PHILOX_AVX2

// out[l] = float32 normal of global element `index0 + l` at step `step` for purpose `tag`.
template <int kLanes>
void fill_normals(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, float* out) {
  using FVec = at::vec::Vectorized<float>;
  static_assert(kLanes % FVec::size() == 0, "normals are drawn in whole float vectors");
  alignas(64) float u0[kLanes], u1[kLanes];
#if defined(NF_PHILOX_AVX2)
  static_assert(FVec::size() == 8, "the AVX2 Philox fills 8-float vectors");
  const __m256 clamp = _mm256_set1_ps(philox::kUniformScale);
  for (int l = 0; l < kLanes; l += 16) {
    __m256i x0[2], x1[2];
    philox16_avx2(seed, step, tag, index0 + static_cast<uint64_t>(l), x0, x1);
    for (int g = 0; g < 2 && l + 8 * g < kLanes; ++g) {
      // max(u, 2^-24) equals the scalar clamp `u < 2^-24 ? 2^-24 : u` (u is never NaN).
      _mm256_store_ps(u0 + l + 8 * g, _mm256_max_ps(uniform8(x0[g]), clamp));
      _mm256_store_ps(u1 + l + 8 * g, uniform8(x1[g]));
    }
  }
#else
  alignas(64) uint32_t x0[kLanes], x1[kLanes];
  philox_lanes<kLanes>(seed, step, tag, index0, x0, x1);
  for (int l = 0; l < kLanes; ++l) {
    const float u = philox::uniform(x0[l]);
    u0[l] = u < philox::kUniformScale ? philox::kUniformScale : u;
    u1[l] = philox::uniform(x1[l]);
  }
#endif
  box_muller_lanes<kLanes>(u0, u1, out);
}

// x0[l], x1[l] = the rounding draw of global element `index0 + l` at step `step`
// (philox::rounding_words: the first two words under kTagRounding), whose half-words round the
// element's stochastic stores (store_bits in noisefuse/bf16_rounding.h).
template <int kLanes>
void fill_rounding_words(uint64_t seed, uint64_t step, uint64_t index0, uint32_t* x0, uint32_t* x1) {
#if defined(NF_PHILOX_AVX2)
  static_assert(kLanes % 16 == 0, "the AVX2 Philox draws 16 lanes at a time");
  for (int l = 0; l < kLanes; l += 16) {
    __m256i w0[2], w1[2];
    philox16_avx2(seed, step, philox::kTagRounding, index0 + static_cast<uint64_t>(l), w0, w1);
    for (int g = 0; g < 2; ++g) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(x0 + l + 8 * g), w0[g]);
      _mm256_store_si256(reinterpret_cast<__m256i*>(x1 + l + 8 * g), w1[g]);
    }
  }
#else
  philox_lanes<kLanes>(seed, step, philox::kTagRounding, index0, x0, x1);
#endif
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
