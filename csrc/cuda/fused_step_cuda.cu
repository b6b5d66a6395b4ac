// The CUDA kernel of noisefuse::fused_step_ as the dispatcher sees it (the op: fused_step_op.h).
#include <torch/library.h>

#include "fused_step_op.h"

TORCH_LIBRARY_IMPL(noisefuse, CUDA, m) {
  m.impl("fused_step_", &noisefuse::cuda::fused_step_device);
}
