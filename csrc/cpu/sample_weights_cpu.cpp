// The CPU kernel of noisefuse::sample_weights (math in noisefuse/sample_weights.h; argument checks
// in sample_weights_inputs.cpp).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "noisefuse/sample_weights.h"

namespace noisefuse {
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
