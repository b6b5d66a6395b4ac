// The gradient of the CUDA fused step, formed in registers (SPEC.md section 0 steps 1-3, section 4;
// docs/kernel-contract.md, "Noise"): unscale and maximize each loaded gradient or grad_sample row,
// sum the rows, draw the per-element normals. Nothing here writes memory: the gradient the update
// uses is never stored. The arithmetic is noise_element.h's, shared with the CPU kernel.
//
// Normals: philox::element_normal, whose Box-Muller uses logf/sqrtf/cosf (nvcc's IEEE library
// functions, not the __logf/__cosf intrinsics: the extension is not built with fast math), so they
// equal torch's to float32 rounding.
#pragma once

#include <cstdint>

#include "noisefuse/noise_element.h"
#include "noisefuse/philox.h"
#include "noisefuse/update_element.h"

namespace noisefuse {
namespace cuda {

// The noise values of one block's chunk.
template <typename math_t>
struct BlockNoise {
  NoiseCoefs<math_t> coefs;
  const float* weights;  // multiplicative: the step's B weights (device memory)
  uint64_t seed;
  uint64_t index0;     // global index of the chunk's element 0
  uint64_t step;       // the tensor's step after this update's increment
  int64_t row_stride;  // elements between two rows of grad_sample (the param's numel)
  int32_t batch;
  bool centered;
};

template <typename math_t>
__device__ inline math_t element_normal(const BlockNoise<math_t>& nz, uint32_t tag, int position) {
  return static_cast<math_t>(philox::element_normal(nz.seed, nz.step, tag, nz.index0 + static_cast<uint64_t>(position)));
}

// g[j] for kIlp elements of the chunk at chunk positions position(j). `load_row(b, r)` fills r with
// row b's kIlp values as loaded (grad itself is row 0), zeros for lanes past the chunk's end.
template <int kNoise, int kIlp, typename math_t, typename LoadRow, typename Position>
__device__ inline void form_grads(const LoadRow& load_row, const Position& position, const ElementCoefs<math_t>& c,
                                  const BlockNoise<math_t>& nz, math_t* g) {
  if constexpr (!noise_reads_rows(kNoise)) {
    load_row(0, g);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) g[j] = preprocess_grad<ScalarOps>(g[j], c);
    if constexpr (kNoise == kIsotropicNoise) {
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        g[j] = isotropic_grad(g[j], nz.coefs, element_normal(nz, philox::kTagIsotropic, position(j)));
      }
    }
  } else {
    RowSums<math_t> sums[kIlp];
#pragma unroll
    for (int j = 0; j < kIlp; ++j) sums[j] = RowSums<math_t>{math_t(0), math_t(0)};
    for (int b = 0; b < nz.batch; ++b) {
      math_t r[kIlp];
      load_row(b, r);
      const math_t w = kNoise == kMultiplicativeNoise ? static_cast<math_t>(nz.weights[b]) : math_t(1);
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        const math_t row = preprocess_grad<ScalarOps>(r[j], c);
        if constexpr (kNoise == kMultiplicativeNoise) add_weighted_row(sums[j], w, row);
        else add_fisher_row(sums[j], row, nz.centered);
      }
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j) g[j] = row_mean(sums[j], nz.coefs);
    if constexpr (kNoise == kDiagFisherNoise) {
      if (nz.centered) {
        for (int b = 0; b < nz.batch; ++b) {
          math_t r[kIlp];
          load_row(b, r);
#pragma unroll
          for (int j = 0; j < kIlp; ++j) add_deviation(sums[j], preprocess_grad<ScalarOps>(r[j], c), g[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        g[j] = fisher_grad<ScalarOps>(g[j], sums[j], nz.coefs, element_normal(nz, philox::kTagDiagFisher, position(j)));
      }
    }
  }
}

}  // namespace cuda
}  // namespace noisefuse
