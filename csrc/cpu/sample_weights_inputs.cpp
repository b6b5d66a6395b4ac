// The argument checks of noisefuse::sample_weights, shared by the CPU and CUDA kernels (and the CUDA
// emulation). Compiled into every build, with the CPU sources.
#include <cmath>
#include <limits>

#include <c10/util/Exception.h>

#include "noisefuse/sample_weights.h"

namespace noisefuse {

WeightHyper check_sample_weights_inputs(const at::Tensor& step, int64_t batch_size, int64_t seed, int64_t kind,
                                        double sigma, double prob) {
  constexpr const char* kOp = "noisefuse.sample_weights: ";
  TORCH_CHECK(step.scalar_type() == at::kLong && step.numel() == 1, kOp,
              "step must be a one-element int64 tensor (the 1-based weight step), got ", step.scalar_type(), " ",
              step.sizes());
  TORCH_CHECK(batch_size >= 1 && batch_size <= std::numeric_limits<int32_t>::max(), kOp,
              "batch_size must be in [1, 2^31), got ", batch_size);
  TORCH_CHECK(kind == kGaussianWeights || kind == kCenteredWeights || kind == kBernoulliWeights, kOp,
              "kind must be 0 (gaussian), 1 (gaussian_centered) or 2 (bernoulli), got ", kind);
  TORCH_CHECK(std::isfinite(sigma), kOp, "sigma must be finite, got ", sigma);
  TORCH_CHECK(kind != kBernoulliWeights || (prob > 0.0 && prob <= 1.0), kOp, "prob must be in (0, 1], got ", prob);
  WeightHyper h{};
  h.seed = static_cast<uint64_t>(seed);
  h.kind = static_cast<int32_t>(kind);
  h.batch = static_cast<int32_t>(batch_size);
  h.sigma = static_cast<float>(sigma);
  if (kind == kBernoulliWeights) {
    // As transforms.py: ceil(q * 2^24) and 1/q in double; the weight rounded once to float32.
    h.keep_below = static_cast<uint32_t>(std::ceil(prob * 16777216.0));
    h.kept = static_cast<float>(1.0 / prob);
  }
  return h;
}

}  // namespace noisefuse
