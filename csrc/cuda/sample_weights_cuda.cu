// The CUDA kernel of noisefuse::sample_weights as the dispatcher sees it (sample_weights_kernel.cuh).
#include <torch/library.h>

#include "sample_weights_kernel.cuh"

TORCH_LIBRARY_IMPL(noisefuse, CUDA, m) {
  m.impl("sample_weights", &noisefuse::cuda::sample_weights_device);
}
