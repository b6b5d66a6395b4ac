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
//   lanes (4 independent chains) go through the rounds together to hide the multiply latency.
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

// The 16 counters (lo32(index0 + l), hi32(index0 + l), lo32(step), tag), l = 0..15, through the ten
// rounds of Philox4x32-10, as 4 chains of 4 lanes: chain c holds lanes {0,1,4,5} + 2 * (c & 1) +
// 8 * (c >> 1) in its 64-bit slots, whose low halves are the output words (w[k][c]: word k).
inline void philox16_avx2_chains(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, __m256i w[4][4]) {
  constexpr int kChains = 4;
  const __m256i base = _mm256_set1_epi64x(static_cast<long long>(index0));
  __m256i* c0 = w[0];
  __m256i* c1 = w[1];
  __m256i* c2 = w[2];
  __m256i* c3 = w[3];
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
  const __m256i w0 = _mm256_set1_epi64x(philox::kW0), w1 = _mm256_set1_epi64x(philox::kW1);
  // The round keys advance by adding (W0, W1) in the low halves (philox::round_key). The rounds are
  // unrolled and each new word xors the old one with the key before the product is ready (off the
  // multiply's path): a fifth faster than xoring after it with keys broadcast per round.
  __m256i key0 = _mm256_set1_epi64x(static_cast<uint32_t>(seed));
  __m256i key1 = _mm256_set1_epi64x(static_cast<uint32_t>(seed >> 32));
#pragma GCC unroll 10
  for (int r = 0; r < philox::kRounds; ++r) {
    for (int c = 0; c < kChains; ++c) {
      const __m256i keyed1 = _mm256_xor_si256(c1[c], key0), keyed3 = _mm256_xor_si256(c3[c], key1);
      const __m256i p0 = _mm256_mul_epu32(c0[c], m0);  // M0 * c0, 64-bit
      const __m256i p1 = _mm256_mul_epu32(c2[c], m1);  // M1 * c2, 64-bit
      c0[c] = _mm256_xor_si256(_mm256_srli_epi64(p1, 32), keyed1);
      c1[c] = p1;
      c2[c] = _mm256_xor_si256(_mm256_srli_epi64(p0, 32), keyed3);
      c3[c] = p0;
    }
    key0 = _mm256_add_epi32(key0, w0);
    key1 = _mm256_add_epi32(key1, w1);
  }
}

// Philox4x32-10 of the 16 counters (lo32(index0 + l), hi32(index0 + l), lo32(step), tag),
// l = 0..15; x0[g], x1[g] receive the first two output words of lanes 8g..8g+7, in lane order.
inline void philox16_avx2(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, __m256i x0[2],
                          __m256i x1[2]) {
  __m256i w[4][4];
  philox16_avx2_chains(seed, step, tag, index0, w);
  // Low halves of chains (2g, 2g+1) into the 8 lanes of group g: chain 2g holds lanes {0,1,4,5}
  // and chain 2g+1 lanes {2,3,6,7} (+ 8g) in its 64-bit slots.
  for (int g = 0; g < 2; ++g) {
    const __m256i a0 = _mm256_shuffle_epi32(w[0][2 * g], 0x88), b0 = _mm256_shuffle_epi32(w[0][2 * g + 1], 0x88);
    const __m256i a1 = _mm256_shuffle_epi32(w[1][2 * g], 0x88), b1 = _mm256_shuffle_epi32(w[1][2 * g + 1], 0x88);
    x0[g] = _mm256_blend_epi32(a0, b0, 0xCC);
    x1[g] = _mm256_blend_epi32(a1, b1, 0xCC);
  }
}

// Rounding word `word` of the 64 elements 4 * group0 + e, e = 0..63 (groups group0 .. group0 + 15):
// out[e] = output word e & 3 of group e / 4 (philox::rounding_group_words, group_word). A chain's
// 64-bit slot of group q becomes elements 4q .. 4q + 3 by placing x1 above x0 and x3 above x2 (one
// shift and blend each) and pairing the two halves (unpack); chain c's slots hold groups
// {0,1,4,5} + b, b = 2 * (c & 1) + 8 * (c >> 1), so the unpacks hold groups (b, b + 4) and
// (b + 1, b + 5) in their 128-bit halves, and one cross-half permute orders each pair.
inline void rounding_words64_avx2(uint64_t seed, uint64_t step, uint64_t group0, uint32_t word, uint32_t* out) {
  __m256i w[4][4];
  philox16_avx2_chains(seed, step, philox::kTagRounding + word, group0, w);
  for (int c = 0; c < 4; ++c) {
    const __m256i x01 = _mm256_blend_epi32(w[0][c], _mm256_slli_epi64(w[1][c], 32), 0xAA);
    const __m256i x23 = _mm256_blend_epi32(w[2][c], _mm256_slli_epi64(w[3][c], 32), 0xAA);
    const __m256i even_slots = _mm256_unpacklo_epi64(x01, x23);  // groups b, b + 4
    const __m256i odd_slots = _mm256_unpackhi_epi64(x01, x23);   // groups b + 1, b + 5
    const int b = 2 * (c & 1) + 8 * (c >> 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * b), _mm256_permute2x128_si256(even_slots, odd_slots, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * (b + 4)),
                        _mm256_permute2x128_si256(even_slots, odd_slots, 0x31));
  }
}

// u = (x >> 8) * 2^-24 for 8 lanes (exact in float32).
inline __m256 uniform8(__m256i x) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 8)), _mm256_set1_ps(philox::kUniformScale));
}

#else  // baseline build

// Philox4x32-10 of the counters (lo32(index0 + l), hi32(index0 + l), lo32(step), tag), l < kLanes,
// one round over every lane at a time (a loop the compiler vectorises); x0..x3 get the output words.
template <int kLanes>
void philox_lanes(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, uint32_t* x0, uint32_t* x1,
                  uint32_t* x2, uint32_t* x3) {
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t index = index0 + static_cast<uint64_t>(l);
    x0[l] = static_cast<uint32_t>(index);
    x1[l] = static_cast<uint32_t>(index >> 32);
    x2[l] = static_cast<uint32_t>(step);
    x3[l] = tag;
  }
  const uint32_t seed_lo = static_cast<uint32_t>(seed), seed_hi = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    const philox::RoundKey key = philox::round_key(seed_lo, seed_hi, r);
    for (int l = 0; l < kLanes; ++l) philox::philox_round(x0[l], x1[l], x2[l], x3[l], key.k0, key.k1);
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
  alignas(64) uint32_t x0[kLanes], x1[kLanes], x2[kLanes], x3[kLanes];
  philox_lanes<kLanes>(seed, step, tag, index0, x0, x1, x2, x3);
  for (int l = 0; l < kLanes; ++l) {
    const float u = philox::uniform(x0[l]);
    u0[l] = u < philox::kUniformScale ? philox::kUniformScale : u;
    u1[l] = philox::uniform(x1[l]);
  }
#endif
  box_muller_lanes<kLanes>(u0, u1, out);
}

// Rounding word `word` (0 or 1) of the kLanes elements from global index `index0` at step `step`
// (philox::rounding_group_words, group_word), one Philox evaluation per group of four elements: out
// (kLanes + 4 entries) receives the word of elements 4 * (index0 >> 2) + e, so element `index0 + l`
// is at [l + (index0 & 3)]. A start off a multiple of 4 needs the group after the vector ones, made
// with the scalar Philox.
template <int kLanes>
void fill_rounding_words(uint64_t seed, uint64_t step, uint64_t index0, uint32_t word, uint32_t* out) {
  static_assert(kLanes % 64 == 0, "rounding words are drawn for 16 groups at a time");
  const uint64_t group0 = index0 >> 2;
#if defined(NF_PHILOX_AVX2)
  for (int e = 0; e < kLanes; e += 64) rounding_words64_avx2(seed, step, group0 + static_cast<uint64_t>(e / 4), word, out + e);
#else
  constexpr int kGroups = kLanes / 4;
  alignas(64) uint32_t x[4][kGroups];
  philox_lanes<kGroups>(seed, step, philox::kTagRounding + word, group0, x[0], x[1], x[2], x[3]);
  for (int g = 0; g < kGroups; ++g) {
    for (int q = 0; q < 4; ++q) out[4 * g + q] = x[q][g];
  }
#endif
  if ((index0 & 3u) != 0) {
    const philox::Words last = philox::rounding_group_words(seed, step, group0 + kLanes / 4, word);
    for (int q = 0; q < 4; ++q) out[kLanes + q] = last.x[q];
  }
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
