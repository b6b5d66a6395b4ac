// The test-only library `noisefuse_emulated`: noisefuse's ops with noisefuse's schemas, whose CPU
// kernels are the CUDA op code of csrc/cuda (fused_step_op.h, sample_weights_kernel.cuh) compiled
// through the CUDA emulation (cuda_emulation.h): the same validation, tables, grid sizes, launches
// and kernels, on CPU tensors. Built by tests/cuda_emulation.py, never into the package.
#include <torch/library.h>

#include "cuda_emulation.h"  // before the CUDA sources: they see its host meaning of CUDA
#include "blockwise_tables.h"
#include "fused_step_op.h"
#include "noisefuse/op_schemas.h"
#include "sample_weights_kernel.cuh"

namespace {

// Test hooks of the 8-bit kernel: its device bucket tables (blockwise_tables.h), and how many codes
// it decided by the fallback search since the last call.
at::Tensor bucket_tables_of(const at::Tensor& code_books) { return noisefuse::cuda::bucket_tables(code_books); }
int64_t code_searches() { return noisefuse::emulation::take_code_searches(); }

}  // namespace

TORCH_LIBRARY(noisefuse_emulated, m) {
  m.def(noisefuse::kFusedStepSchema);
  m.def(noisefuse::kSampleWeightsSchema);
  m.def("bucket_tables(Tensor code_books) -> Tensor");
  m.def("code_searches() -> int", &code_searches);  // no tensor to dispatch on: one kernel for all
}

TORCH_LIBRARY_IMPL(noisefuse_emulated, CPU, m) {
  m.impl("fused_step_", &noisefuse::cuda::fused_step_device);
  m.impl("sample_weights", &noisefuse::cuda::sample_weights_device);
  m.impl("bucket_tables", &bucket_tables_of);
}
