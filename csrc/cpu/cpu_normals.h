// Per-element normals for the CPU kernel (docs/kernel-contract.md, "Noise"), a block of lanes at a
// time: Philox4x32-10 run round by round over arrays of counters (plain loops over lanes that the
// compiler turns into vector multiplies and xors in the AVX2 build), then Box-Muller's log, sqrt
// and cos on at::vec vectors (Sleef's 1-ulp functions in the AVX2 build, the C library's in the
// baseline one). The integer words equal philox::philox4x32_10's bit for bit (same round
// function); the normals equal torch's to the float32 rounding of log and cos.
// Included by fused_step_cpu_kernel.h inside its per-ISA namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

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

// out[l] = float32 normal of global element `index0 + l` at step `step` for purpose `tag`.
template <int kLanes>
void fill_normals(uint64_t seed, uint64_t step, uint32_t tag, uint64_t index0, float* out) {
  using FVec = at::vec::Vectorized<float>;
  static_assert(kLanes % FVec::size() == 0, "normals are drawn in whole float vectors");
  alignas(64) uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t index = index0 + static_cast<uint64_t>(l);
    c0[l] = static_cast<uint32_t>(index);
    c1[l] = static_cast<uint32_t>(index >> 32);
    c2[l] = static_cast<uint32_t>(step);
    c3[l] = tag;
  }
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < philox::kRounds; ++r) {
    if (r > 0) {
      k0 += philox::kW0;
      k1 += philox::kW1;
    }
    for (int l = 0; l < kLanes; ++l) philox::philox_round(c0[l], c1[l], c2[l], c3[l], k0, k1);
  }
  alignas(64) float u0[kLanes], u1[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const float u = philox::uniform(c0[l]);
    u0[l] = u < philox::kUniformScale ? philox::kUniformScale : u;
    u1[l] = philox::uniform(c1[l]);
  }
  const FVec minus_two(-2.0f), two_pi(philox::kTwoPi);
  for (int l = 0; l < kLanes; l += FVec::size()) {
    const FVec radius = (minus_two * FVec::loadu(u0 + l).log()).sqrt();
    (radius * (FVec::loadu(u1 + l) * two_pi).cos()).store(out + l);
  }
}

}  // namespace
}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
