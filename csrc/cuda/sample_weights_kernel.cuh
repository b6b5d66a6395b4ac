// The CUDA kernel of noisefuse::sample_weights (math in noisefuse/sample_weights.h) and its op: the
// whole vector in one launch of one block, the step read on the device, so drawing a step's
// weights is one kernel instead of the few hundred small ops of the torch draw, and it can be
// captured. Registered by the CUDA build (sample_weights_cuda.cu) and by the CUDA emulation.
#pragma once

#include <ATen/ops/empty.h>

#include "kernel_launch.cuh"
#include "noisefuse/sample_weights.h"

namespace noisefuse {
namespace cuda {

constexpr int kWeightThreads = 256;

// Internal linkage: each library compiles this header in one file (the op's registration).
namespace {

__global__ void __launch_bounds__(kWeightThreads)
    sample_weights_kernel(WeightHyper h, const int64_t* step, float* out) {
  h.step = static_cast<uint64_t>(*step);
  double partial = 0.0;  // of this thread's float32 xi
  // 64-bit index: B may come within one stride of 2^31.
  for (int64_t b = threadIdx.x; b < h.batch; b += kWeightThreads) {
    out[b] = raw_weight(h, static_cast<uint32_t>(b));
    partial += out[b];
  }
  if (h.kind == kBernoulliWeights) return;
  float mean = 0.f;
  if (h.kind == kCenteredWeights) {  // the kind is uniform over the block: every thread syncs
    __shared__ double sums[kWeightThreads];
    sums[threadIdx.x] = partial;
    __syncthreads();
    for (int half = kWeightThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
      __syncthreads();
    }
    mean = static_cast<float>(sums[0] / h.batch);
  }
  for (int64_t b = threadIdx.x; b < h.batch; b += kWeightThreads) out[b] = gaussian_weight(h.sigma, out[b], mean);
}

}  // namespace

inline at::Tensor sample_weights_device(const at::Tensor& step, int64_t batch_size, int64_t seed, int64_t kind,
                                        double sigma, double prob) {
  const WeightHyper h = check_sample_weights_inputs(step, batch_size, seed, kind, sigma, prob);
  const DeviceGuard device_guard(step.device());
  at::Tensor out = at::empty({batch_size}, step.options().dtype(at::kFloat));
  launch_kernel(sample_weights_kernel, 1, kWeightThreads, h, step.const_data_ptr<int64_t>(), out.data_ptr<float>());
  return out;
}

}  // namespace cuda
}  // namespace noisefuse
