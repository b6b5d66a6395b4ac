// Kernels that test the CUDA emulation itself (tests/test_cuda_emulated.py): what its execution model
// promises (cuda_emulation.h) is checked on small kernels with a known bug or a known answer,
// exposed as the test-only op noisefuse_emulated::emulation_selftest(str case) -> Tensor.
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <string>

#include "cuda_emulation.h"  // before the kernels: they see its host meaning of CUDA

namespace {

constexpr int kThreads = 64;

// Thread 0 publishes a value in shared memory; the others read it without a barrier. out[t] is what
// thread t saw: 0 (a block's fresh shared memory) wherever the emulation ran it before thread 0.
__global__ void missing_barrier_kernel(int32_t* out) {
  __shared__ int32_t published;
  if (threadIdx.x == 0) published = 7;
  out[blockIdx.x * blockDim.x + threadIdx.x] = published;
}

// The same with the barrier: every thread sees 7.
__global__ void barrier_kernel(int32_t* out) {
  __shared__ int32_t published;
  if (threadIdx.x == 0) published = 7;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = published;
}

// Half the threads return before a barrier that the others wait at.
__global__ void divergent_barrier_kernel(int32_t* out) {
  if (threadIdx.x % 2 == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Records the order in which the blocks ran (blocks run one at a time: no race on the counter).
__global__ void block_order_kernel(int32_t* out, int32_t* next) {
  if (threadIdx.x == 0) out[(*next)++] = static_cast<int32_t>(blockIdx.x);
}

// What a block finds in shared memory before it writes any: the previous block's value, or 0.
__global__ void fresh_shared_kernel(int32_t* out) {
  __shared__ int32_t left_over;
  if (threadIdx.x == 0) {
    out[blockIdx.x] = left_over;
    left_over = 1000 + static_cast<int32_t>(blockIdx.x);
  }
}

at::Tensor emulation_selftest(c10::string_view which) {
  const std::string name(which);
  constexpr int kBlocks = 8;
  at::Tensor out = at::zeros({kBlocks * kThreads}, at::kInt);
  int32_t* o = out.data_ptr<int32_t>();
  if (name == "missing_barrier") {
    noisefuse::emulation::launch(missing_barrier_kernel, dim3(kBlocks), dim3(kThreads), o);
  } else if (name == "barrier") {
    noisefuse::emulation::launch(barrier_kernel, dim3(kBlocks), dim3(kThreads), o);
  } else if (name == "divergent_barrier") {
    noisefuse::emulation::launch(divergent_barrier_kernel, dim3(1), dim3(kThreads), o);
  } else if (name == "block_order") {
    at::Tensor next = at::zeros({1}, at::kInt);
    noisefuse::emulation::launch(block_order_kernel, dim3(kBlocks), dim3(kThreads), o, next.data_ptr<int32_t>());
    return out.narrow(0, 0, kBlocks);
  } else if (name == "fresh_shared") {
    noisefuse::emulation::launch(fresh_shared_kernel, dim3(kBlocks), dim3(kThreads), o);
    return out.narrow(0, 0, kBlocks);
  } else {
    TORCH_CHECK(false, "emulation_selftest: unknown case '", name, "'");
  }
  return out;
}

}  // namespace

// No tensor argument to dispatch on: one kernel for every dispatch key.
TORCH_LIBRARY_FRAGMENT(noisefuse_emulated, m) {
  m.def("emulation_selftest(str which) -> Tensor", &emulation_selftest);
}
