// Test support for tests/test_blockwise_codes.py (the op: blockwise_check_op.cpp): this build's
// encode_block (cpu_blockwise.h) and the scalar decision of noisefuse/blockwise_codes.h, against the
// contract's count for a range of float32 bit patterns x at one scale. Included after
// fused_step_cpu_kernel.h by each kernel build; the fused step never calls it.
#pragma once

#include <ATen/Parallel.h>

#include <atomic>

#include "blockwise_check.h"

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {

void check_blockwise_codes(const BlockwiseCheck& a, int64_t* counts) {
  float s;
  std::memcpy(&s, &a.scale_bits, sizeof(s));
  float products[255];  // the contract's P[k] = T[k] * s, formed apart from encode_block's
  for (int k = 0; k < 255; ++k) products[k] = a.points[k] * s;
  const float inverse = 1.f / s;
  const int64_t total = static_cast<int64_t>((a.last - a.first) / a.stride) + 1;
  constexpr int64_t kSpan = 4096;
  std::atomic<int64_t> wrong{0}, searched{0};
  at::parallel_for(0, (total + kSpan - 1) / kSpan, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float x[kSpan];
    uint8_t codes[kSpan];
    int64_t local_wrong = 0, local_searched = 0;
    for (int64_t span = begin; span < end; ++span) {
      const int64_t n = std::min(kSpan, total - span * kSpan);
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t u = a.first + static_cast<uint32_t>((span * kSpan + j) * a.stride);
        std::memcpy(&x[j], &u, sizeof(float));
      }
      encode_block(x, n, *a.row, s, codes);
      int count = 0;  // #{k : P[k] < x}, walked from the last x (the x are monotone within a sign)
      for (int64_t j = 0; j < n; ++j) {
        const float v = x[j] != x[j] ? 0.f : x[j];
        while (count < 255 && products[count] < v) ++count;
        while (count > 0 && !(products[count - 1] < v)) --count;
        int guess;
        local_wrong += codes[j] != count;
        local_searched += s != 0.f && !code_by_bucket(*a.row, s, inverse, v, &guess);
      }
    }
    wrong += local_wrong;
    searched += local_searched;
  });
  counts[0] = total;
  counts[1] = wrong;
  counts[2] = searched;
}

}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
