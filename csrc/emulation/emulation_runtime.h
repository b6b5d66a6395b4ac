// The CUDA emulation's runtime interface (cuda_emulation.cpp): the launch geometry types and the
// scheduler's entry points. Plain C++ with no CUDA macros, so that the scheduler itself compiles
// without them; kernel code includes cuda_emulation.h instead, which adds the macros.
#pragma once

#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

// CUDA's built-in vector types of the launch geometry.
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace noisefuse {
namespace emulation {

// The calling fiber's coordinates (threadIdx and the others below).
struct ThreadCoordinates {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
const ThreadCoordinates& coordinates();

// __syncthreads(): suspends the calling fiber until every thread of its block has arrived.
void sync_threads();

// A count of events the tests read (the 8-bit kernel's fallback code searches): one increment, and
// the count since the last take.
void count_code_search();
int64_t take_code_searches();

// Runs `thread_body` as every thread of every block of a grid (the model: cuda_emulation.h); throws
// std::runtime_error on a divergent barrier, rethrows what a thread threw.
void run_grid(dim3 grid, dim3 block, const std::function<void()>& thread_body);

// kernel<<<grid, block>>>(args...): the arguments are converted to the kernel's parameter types
// once, as CUDA copies them into the launch's parameter space, and each thread receives them.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  run_grid(grid, block, [&] { std::apply(kernel, params); });
}

}  // namespace emulation
}  // namespace noisefuse
