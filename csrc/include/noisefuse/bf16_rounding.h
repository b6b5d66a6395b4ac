// Stochastic rounding of a float32 to bfloat16 (docs/kernel-contract.md, "Mixed precision"),
// shared by the CPU and CUDA kernels; the torch twin is noisefuse/random/rounding.py.
//
// A bfloat16 is the upper half of a float32, so the low 16 bits of the float32's pattern are the
// position of |x| between its two bfloat16 neighbours in units of 2^-16 of their gap: adding 16
// uniform bits `r` carries into the upper half with exactly that probability (E[result] = x).
// NaN and inf are handled apart: the add could carry a NaN's payload into the sign or onto inf.
//
// Each element has two 32-bit rounding words (w0, w1), word k the element's quarter of a Philox
// evaluation shared by four elements (philox::rounding_group_words); each store takes its own 16 bits
// of them, as noisefuse/random/rounding.py assigns them.
#pragma once

#include <cstdint>
#include <cstring>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"

namespace noisefuse {

// The stores of one element that may be rounded stochastically, numbered as rounding.py's parts:
// store s takes bits [16 * (s & 1), 16 * (s & 1) + 16) of the element's word s >> 1 (w0 or w1).
enum RoundedStore : int { kMomentumStore = 0, kSecondMomentStore = 1, kParamStore = 2, kMaxSecondMomentStore = 3 };

// The rounding word that store `store` reads.
constexpr int rounding_word_of(int store) { return store >> 1; }

// Whether a step reads rounding word `word` (drawing only these): one whose stochastic stores are the
// params' (`params`) and/or the state's (`state`: the momentum, the second moment where the family
// has one, the amsgrad maximum where it keeps one). The CPU and CUDA kernels both ask this.
constexpr bool reads_rounding_word(int word, bool params, bool state, bool second_moment, bool amsgrad) {
  return (params && rounding_word_of(kParamStore) == word) ||
         (state && (rounding_word_of(kMomentumStore) == word ||
                    (second_moment && rounding_word_of(kSecondMomentStore) == word) ||
                    (amsgrad && rounding_word_of(kMaxSecondMomentStore) == word)));
}

inline namespace NF_ISA_NS {

// The 16 random bits of store `store` (RoundedStore) in its rounding word `word`.
C10_HOST_DEVICE inline uint32_t word_bits(uint32_t word, int store) {
  return (word >> (16 * (store & 1))) & 0xFFFFu;
}

// The 16 random bits of store `store` of an element whose rounding words are (w0, w1).
C10_HOST_DEVICE inline uint32_t store_bits(uint32_t w0, uint32_t w1, int store) {
  return word_bits(rounding_word_of(store) == 0 ? w0 : w1, store);
}

// The bits of the bfloat16 that float32 `x` rounds to with the random bits `r` (< 2^16).
C10_HOST_DEVICE inline uint16_t stochastic_bf16_bits(float x, uint32_t r) {
#if defined(__CUDA_ARCH__)
  const uint32_t u = __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
#endif
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return 0x7FC0u;                       // NaN: torch's, sign dropped
  if (magnitude == 0x7F800000u) return static_cast<uint16_t>(u >> 16);  // +-inf, kept exactly
  return static_cast<uint16_t>((u + r) >> 16);  // finite: the add cannot wrap past the sign
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
