// The CPU kernel of noisefuse::sample_weights (math in noisefuse/sample_weights.h), and the argument
// checks it shares with the CUDA kernel (this file is compiled into every build).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

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

namespace {

at::Tensor sample_weights_cpu(const at::Tensor& step, int64_t batch_size, int64_t seed, int64_t kind, double sigma,
                              double prob) {
  WeightHyper h = check_sample_weights_inputs(step, batch_size, seed, kind, sigma, prob);
  const int64_t t = *step.const_data_ptr<int64_t>();
  TORCH_CHECK(t >= 1, "noisefuse.sample_weights: step is 1-based, got ", t);
  h.step = static_cast<uint64_t>(t);
  at::Tensor out = at::empty({batch_size}, step.options().dtype(at::kFloat));
  float* w = out.data_ptr<float>();
  double sum = 0.0;  // of the float32 xi, in index order
  for (int32_t b = 0; b < h.batch; ++b) {
    w[b] = raw_weight(h, static_cast<uint32_t>(b));
    sum += w[b];
  }
  if (h.kind == kBernoulliWeights) return out;
  const float mean = h.kind == kCenteredWeights ? static_cast<float>(sum / h.batch) : 0.f;
  for (int32_t b = 0; b < h.batch; ++b) w[b] = gaussian_weight(h.sigma, w[b], mean);
  return out;
}

}  // namespace
}  // namespace noisefuse

TORCH_LIBRARY_IMPL(noisefuse, CPU, m) {
  m.impl("sample_weights", &noisefuse::sample_weights_cpu);
}
