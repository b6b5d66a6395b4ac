// The per-sample weight vector of multiplicative noise (SPEC.md section 4), drawn by the CPU and
// CUDA kernels of noisefuse::sample_weights exactly as noisefuse/noise/transforms.py::sample_weights
// draws it in torch: sample b's counter is (b, 0, lo32(t), kTagWeights), and from its words x0, x1
//   gaussian:          w_b = 1 + sigma * xi_b,                 xi_b = Box-Muller(x0, x1)
//   gaussian_centered: w_b = 1 + sigma * (xi_b - mean),        mean = float32(float64 mean of the xi)
//   bernoulli:         w_b = float32(1/q) if (x0 >> 8) < ceil(q 2^24), else 0
// in float32, each operation rounded on its own as torch rounds it (no fused multiply-add).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "noisefuse/philox.h"

namespace noisefuse {

// Codes of the op's `kind` argument: the index in noisefuse.noise.config.MULTIPLICATIVE_KINDS.
enum WeightKind : int { kGaussianWeights = 0, kCenteredWeights = 1, kBernoulliWeights = 2 };

// The call's values, plain data for a kernel argument.
struct WeightHyper {
  uint64_t seed;
  uint64_t step;         // t, the 1-based weight step (only lo32 enters the counter)
  int32_t kind;         // WeightKind
  int32_t batch;        // B
  float sigma;          // gaussian kinds: float32(sigma), as torch rounds a Python scalar
  float kept;           // bernoulli: float32(1 / q)
  uint32_t keep_below;  // bernoulli: ceil(q 2^24), the threshold of x0 >> 8
};

// Checks the op's arguments before anything is allocated (the message names the bad one) and
// returns its values, `step` left 0: the CPU kernel reads it on the host, the CUDA kernel on the
// device (so a captured graph draws each replay's weights from that replay's counter).
WeightHyper check_sample_weights_inputs(const at::Tensor& step, int64_t batch_size, int64_t seed, int64_t kind,
                                        double sigma, double prob);

inline namespace NF_ISA_NS {

// xi_b for the gaussian kinds, or the final weight for bernoulli.
C10_HOST_DEVICE inline float raw_weight(const WeightHyper& h, uint32_t sample) {
  const philox::Words w = philox::weight_words(h.seed, h.step, sample);
  if (h.kind == kBernoulliWeights) return (w.x[0] >> 8) < h.keep_below ? h.kept : 0.f;
  return philox::box_muller(w.x[0], w.x[1]);
}

// 1 + sigma * (xi - mean) with two roundings, as torch's `1.0 + sigma * xi` (mean 0 when not
// centered; xi - 0 is exact). The CUDA intrinsics keep nvcc from contracting it into an FMA.
C10_HOST_DEVICE inline float gaussian_weight(float sigma, float xi, float mean) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(1.f, __fmul_rn(sigma, __fsub_rn(xi, mean)));
#else
  const float scaled = sigma * (xi - mean);
  return 1.f + scaled;
#endif
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
