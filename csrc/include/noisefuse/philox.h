// Philox4x32-10 (Salmon, Moraes, Dror and Shaw, SC 2011): the one random stream of noisefuse,
// shared by the CPU and the CUDA kernels (SPEC.md section 5). The pure-torch twin is
// noisefuse/random/philox.py; the Triton twin is noisefuse/random/philox_triton.py. Integer
// outputs agree bit for bit; normals agree to the float32 rounding of log and cos.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "noisefuse/isa.h"

namespace noisefuse {
inline namespace NF_ISA_NS {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr int kRounds = 10;

// Purpose tags (fourth counter word); keep in sync with noisefuse/random/philox.py.
constexpr uint32_t kTagIsotropic = 1u;
constexpr uint32_t kTagDiagFisher = 2u;
constexpr uint32_t kTagWeights = 3u;
constexpr uint32_t kTagRounding = 4u;  // rounding word k is drawn under kTagRounding + k (k = 0, 1)

constexpr float kUniformScale = 5.9604644775390625e-08f;  // 2^-24, also the clamp before log
constexpr float kTwoPi = 6.2831854820251465f;             // float32(2 pi)

struct Words {
  uint32_t x[4];
};

C10_HOST_DEVICE inline void mulhilo(uint32_t m, uint32_t c, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(m, c);
  lo = m * c;
#else
  const uint64_t product = static_cast<uint64_t>(m) * static_cast<uint64_t>(c);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
#endif
}

// One Philox round on the counter words under the round key (k0, k1). Kept apart so the CPU
// kernel can run it lane by lane over arrays of counters, a loop the compiler vectorises.
C10_HOST_DEVICE inline void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo(kM0, c0, hi0, lo0);
  mulhilo(kM1, c2, hi1, lo1);
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// The key of round r (0-based) under the key (k0, k1): each half bumped r times by its Weyl
// constant, mod 2^32 (unsigned arithmetic wraps). Every Philox loop of the CPU and CUDA kernels
// takes its round keys from here.
struct RoundKey {
  uint32_t k0, k1;
};
C10_HOST_DEVICE inline RoundKey round_key(uint32_t k0, uint32_t k1, int r) {
  return RoundKey{k0 + static_cast<uint32_t>(r) * kW0, k1 + static_cast<uint32_t>(r) * kW1};
}

// Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1).
C10_HOST_DEVICE inline Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                           uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    const RoundKey key = round_key(k0, k1, r);
    philox_round(c0, c1, c2, c3, key.k0, key.k1);
  }
  return Words{{c0, c1, c2, c3}};
}

// u = (x >> 8) * 2^-24, exact in float32, in [0, 1).
C10_HOST_DEVICE inline float uniform(uint32_t x) {
  return static_cast<float>(x >> 8) * kUniformScale;
}

// One N(0, 1): Box-Muller on the first two words, cosine only (the sine half is not used).
C10_HOST_DEVICE inline float box_muller(uint32_t x0, uint32_t x1) {
  float u0 = uniform(x0);
  u0 = u0 < kUniformScale ? kUniformScale : u0;
  const float radius = ::sqrtf(-2.0f * ::logf(u0));
  return radius * ::cosf(uniform(x1) * kTwoPi);
}

// The normal of global element `index` at step `step` for purpose `tag`:
// counter (lo32(index), hi32(index), lo32(step), tag), key (lo32(seed), hi32(seed)).
C10_HOST_DEVICE inline float element_normal(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index) {
  const Words w = philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                                static_cast<uint32_t>(step), tag, static_cast<uint32_t>(seed),
                                static_cast<uint32_t>(seed >> 32));
  return box_muller(w.x[0], w.x[1]);
}

// The Philox words of the rounding group `group` (elements 4 group .. 4 group + 3) for rounding word
// `word` (0 or 1) at step `step`: counter (lo32(group), hi32(group), lo32(step), kTagRounding + word).
// Element `index` belongs to group index >> 2 and takes output word index & 3 (group_word); its
// word's half-words round its stochastic stores (bf16_rounding.h, store_bits).
C10_HOST_DEVICE inline Words rounding_group_words(uint64_t seed, uint64_t step, uint64_t group, uint32_t word) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), static_cast<uint32_t>(step),
                       kTagRounding + word, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Word `lane` (0..3: an element's index & 3) of a group's output, by selects (a computed index into
// the array would put it in local memory on the GPU).
C10_HOST_DEVICE inline uint32_t group_word(const Words& w, uint32_t lane) {
  const uint32_t low = (lane & 1u) != 0 ? w.x[1] : w.x[0];
  const uint32_t high = (lane & 1u) != 0 ? w.x[3] : w.x[2];
  return (lane & 2u) != 0 ? high : low;
}

// The two words of sample `sample`'s weight counter (sample, 0, lo32(step), kTagWeights).
C10_HOST_DEVICE inline Words weight_words(uint64_t seed, uint64_t step, uint32_t sample) {
  return philox4x32_10(sample, 0u, static_cast<uint32_t>(step), kTagWeights, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

}  // namespace philox
}  // namespace NF_ISA_NS
}  // namespace noisefuse
