// Where the CUDA build and the CUDA emulation (csrc/emulation, a test tool) differ: how a kernel is
// launched, and the device the op's tensors live on. Everything else of csrc/cuda — tables, grid
// sizes, the launches per table, the type and variant dispatch, the kernels — is compiled the same
// way for both.
#pragma once

#include <utility>

#include <c10/core/DeviceType.h>

#if defined(NOISEFUSE_CUDA_EMULATION)
#include "cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace noisefuse {
namespace cuda {

#if defined(NOISEFUSE_CUDA_EMULATION)

// Emulated "device" memory is host memory: the op's tensors are CPU tensors.
constexpr c10::DeviceType kDeviceType = c10::DeviceType::CPU;

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), unsigned int grid, unsigned int block, Args&&... args) {
  emulation::launch(kernel, dim3(grid), dim3(block), std::forward<Args>(args)...);
}

// The 8-bit kernel's fallback code search, counted where the tests can read it (emulated_ops.cpp):
// how they see that the O(1) decision is taken.
#define NF_COUNT_CODE_SEARCH() ::noisefuse::emulation::count_code_search()

#else

constexpr c10::DeviceType kDeviceType = c10::DeviceType::CUDA;
using DeviceGuard = c10::cuda::CUDAGuard;

#define NF_COUNT_CODE_SEARCH() ((void)0)

// kernel<<<grid, block>>>(args...) on the current stream, no dynamic shared memory.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), unsigned int grid, unsigned int block, Args&&... args) {
  kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#endif

}  // namespace cuda
}  // namespace noisefuse
