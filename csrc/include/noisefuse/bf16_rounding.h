// Stochastic rounding of a float32 to bfloat16 (docs/kernel-contract.md, "Mixed precision"),
// shared by the CPU and CUDA kernels; the torch twin is noisefuse/random/rounding.py.
//
// A bfloat16 is the upper half of a float32, so the low 16 bits of the float32's pattern are the
// position of |x| between its two bfloat16 neighbours in units of 2^-16 of their gap: adding 16
// uniform bits `r` carries into the upper half with exactly that probability (E[result] = x).
// NaN and inf are handled apart: the add could carry a NaN's payload into the sign or onto inf.
//
// One Philox draw per element serves every stochastic store of the step: each store takes its own
// 16 bits of the draw's first two words (x0, x1), as noisefuse/random/rounding.py assigns them.
#pragma once

#include <cstdint>
#include <cstring>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"

namespace noisefuse {

// The stores of one element that may be rounded stochastically, numbered as rounding.py's parts:
// store k takes bits [16 * (k % 2), 16 * (k % 2) + 16) of word x0 (k < 2) or x1.
enum RoundedStore : int { kParamStore = 0, kMomentumStore = 1, kSecondMomentStore = 2, kMaxSecondMomentStore = 3 };

inline namespace NF_ISA_NS {

// The 16 random bits of store `store` (RoundedStore) of an element whose rounding draw is (x0, x1).
C10_HOST_DEVICE inline uint32_t store_bits(uint32_t x0, uint32_t x1, int store) {
  return ((store < kSecondMomentStore ? x0 : x1) >> (16 * (store % 2))) & 0xFFFFu;
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
