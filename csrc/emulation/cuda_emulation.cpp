// The scheduler of the CUDA emulation (cuda_emulation.h, emulation_runtime.h): blocks one at a time
// on an OS thread of their own, in a shuffled order; a block's threads as fibers that run, between
// barriers, in an order shuffled anew for each phase.
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#include "emulation_runtime.h"

namespace noisefuse {
namespace emulation {
namespace {

// A fiber's stack: generous for a kernel frame (the 4 KB parameter table is copied into it) and
// for AddressSanitizer's redzones, with an inaccessible guard page below it so that an overflow
// faults instead of corrupting the neighbouring stack. Mapped lazily: untouched pages cost nothing.
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;

struct Stack {
  char* base = nullptr;  // the guard page; the usable stack follows it
  char* bottom() const { return base + kGuardBytes; }
};

Stack map_stack() {
  void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map a fiber stack");
  mprotect(p, kGuardBytes, PROT_NONE);
  return Stack{static_cast<char*>(p)};
}

// --- context switching ----------------------------------------------------------------------------
// x86-64: a suspended execution is its stack pointer. emulation_switch pushes the System V ABI's
// callee-saved registers on the current stack, stores the stack pointer, loads the other one and
// pops its registers; its `ret` resumes the other execution (15 ns a round trip here, against
// 800 ns for swapcontext, which also saves the signal mask with a system call). Elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void noisefuse_emulation_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .globl noisefuse_emulation_switch
  .hidden noisefuse_emulation_switch
  .type noisefuse_emulation_switch, @function
noisefuse_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size noisefuse_emulation_switch, .-noisefuse_emulation_switch
  .popsection
)");

struct Context {
  void* sp = nullptr;
};

void switch_context(Context& from, const Context& to) { noisefuse_emulation_switch(&from.sp, to.sp); }

// A context that starts `entry` on the stack [bottom, bottom + size): the first switch to it pops
// six zeroed registers and "returns" into entry, with the stack aligned as after a call; a null
// return address above it ends backtraces. `entry` must never return.
void make_context(Context& context, char* bottom, size_t size, void (*entry)()) {
  auto** top = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(bottom + size) & ~uintptr_t{15});
  top[-1] = nullptr;
  top[-2] = reinterpret_cast<void*>(entry);
  for (int slot = 3; slot <= 8; ++slot) top[-slot] = nullptr;
  context.sp = &top[-8];
}
#else
struct Context {
  ucontext_t uc;
};

void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }

void make_context(Context& context, char* bottom, size_t size, void (*entry)()) {
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = bottom;
  context.uc.uc_stack.ss_size = size;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
}
#endif

enum class FiberState { kRunnable, kAtBarrier, kDone };

struct Fiber {
  Context context;
  ThreadCoordinates coordinates;
  FiberState state = FiberState::kRunnable;
  int64_t barriers = 0;  // barriers this thread has passed
  Stack stack;
  void* fake_stack = nullptr;  // AddressSanitizer's fake stack of this fiber while it is switched out
};

struct Block {
  std::vector<Fiber> fibers;
  Context scheduler;
  Fiber* running = nullptr;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  const void* scheduler_stack_bottom = nullptr;  // for AddressSanitizer's fiber switches
  size_t scheduler_stack_size = 0;
};

// The block that the calling OS thread runs, and the fiber of it that runs now.
thread_local Block* current_block = nullptr;

// Launches are serialized: the fiber stacks are shared by every block.
std::mutex launch_mutex;
std::vector<Stack> stack_pool;
bool stacks_dirty = false;  // a block was abandoned mid-kernel: its frames may still be poisoned

// --- AddressSanitizer's fiber annotations (no-ops in a build without it) ---------------------------
void start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

// --- deterministic shuffles ---------------------------------------------------------------------
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t base_seed() {
  const char* text = std::getenv("NOISEFUSE_EMULATION_SEED");
  return text != nullptr ? std::strtoull(text, nullptr, 0) : 0x5EEDC0DEull;
}

// A permutation of 0..n-1 drawn from `seed`, never the identity when n > 1 (reversed if the draw
// happens to be), so an order dependence can never hide behind the natural order.
std::vector<uint32_t> shuffled(uint32_t n, uint64_t seed) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  uint64_t state = seed;
  for (uint32_t i = n; i > 1; --i) {
    state = splitmix64(state);
    std::swap(order[i - 1], order[state % i]);
  }
  if (n > 1 && std::is_sorted(order.begin(), order.end())) std::reverse(order.begin(), order.end());
  return order;
}

uint3 unflatten(uint32_t linear, dim3 extent) {
  return uint3{linear % extent.x, (linear / extent.x) % extent.y, linear / (extent.x * extent.y)};
}

// --- fibers ---------------------------------------------------------------------------------------
void switch_to_scheduler(Block& block, Fiber& fiber, bool exiting) {
  start_switch(exiting ? nullptr : &fiber.fake_stack, block.scheduler_stack_bottom, block.scheduler_stack_size);
  switch_context(fiber.context, block.scheduler);
  finish_switch(fiber.fake_stack, &block.scheduler_stack_bottom, &block.scheduler_stack_size);
}

void fiber_main() {
  Block& block = *current_block;
  Fiber& fiber = *block.running;
  finish_switch(nullptr, &block.scheduler_stack_bottom, &block.scheduler_stack_size);
  try {
    (*block.body)();
  } catch (...) {
    if (!block.error) block.error = std::current_exception();
  }
  fiber.state = FiberState::kDone;
  switch_to_scheduler(block, fiber, /*exiting=*/true);
}

std::string block_name(const uint3& b) {
  return "(" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
}

// Runs one block to completion on the calling OS thread.
void run_block(Block& block, uint64_t seed, uint32_t block_linear) {
  current_block = &block;
  for (Fiber& fiber : block.fibers) {
    make_context(fiber.context, fiber.stack.bottom(), kStackBytes, fiber_main);
  }
  const uint32_t threads = static_cast<uint32_t>(block.fibers.size());
  for (uint64_t phase = 0;; ++phase) {
    for (uint32_t t : shuffled(threads, splitmix64(seed ^ (uint64_t{block_linear} << 20) ^ phase))) {
      Fiber& fiber = block.fibers[t];
      if (fiber.state != FiberState::kRunnable) continue;
      block.running = &fiber;
      void* fake_stack = nullptr;
      start_switch(&fake_stack, fiber.stack.bottom(), kStackBytes);
      switch_context(block.scheduler, fiber.context);
      finish_switch(fake_stack, nullptr, nullptr);
      if (block.error) return;  // the other threads are abandoned where they stand
    }
    uint32_t waiting = 0;
    int64_t barrier = -1;
    bool same_barrier = true;
    for (const Fiber& fiber : block.fibers) {
      if (fiber.state != FiberState::kAtBarrier) continue;
      same_barrier = same_barrier && (barrier < 0 || fiber.barriers == barrier);
      barrier = fiber.barriers;
      ++waiting;
    }
    if (waiting == 0) return;  // every thread returned
    const std::string where = "CUDA emulation: block " + block_name(block.fibers[0].coordinates.block_idx) + ": ";
    if (waiting != threads) {
      throw std::runtime_error(where + std::to_string(waiting) + " of " + std::to_string(threads) +
                               " threads wait at __syncthreads() while the others returned (a barrier in "
                               "divergent code)");
    }
    if (!same_barrier) {
      throw std::runtime_error(where + "threads wait at different __syncthreads() (a barrier in divergent code)");
    }
    for (Fiber& fiber : block.fibers) fiber.state = FiberState::kRunnable;
  }
}

}  // namespace

const ThreadCoordinates& coordinates() {
  if (current_block == nullptr || current_block->running == nullptr) {
    throw std::runtime_error("CUDA emulation: threadIdx/blockIdx read outside a kernel launch");
  }
  return current_block->running->coordinates;
}

void sync_threads() {
  if (current_block == nullptr || current_block->running == nullptr) {
    throw std::runtime_error("CUDA emulation: __syncthreads() called outside a kernel launch");
  }
  Block& block = *current_block;
  Fiber& fiber = *block.running;
  fiber.state = FiberState::kAtBarrier;
  ++fiber.barriers;
  switch_to_scheduler(block, fiber, /*exiting=*/false);
}

namespace {
std::atomic<int64_t> code_searches{0};
}  // namespace

void count_code_search() { code_searches.fetch_add(1, std::memory_order_relaxed); }
int64_t take_code_searches() { return code_searches.exchange(0); }

void run_grid(dim3 grid, dim3 block_dim, const std::function<void()>& thread_body) {
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  const uint64_t threads = uint64_t{block_dim.x} * block_dim.y * block_dim.z;
  if (blocks == 0 || threads == 0 || threads > 1024 || grid.y > 65535 || grid.z > 65535 ||
      blocks > std::numeric_limits<uint32_t>::max()) {
    throw std::runtime_error("CUDA emulation: invalid launch configuration (grid " +
                             block_name(uint3{grid.x, grid.y, grid.z}) + ", block " +
                             block_name(uint3{block_dim.x, block_dim.y, block_dim.z}) + ")");
  }
  const std::lock_guard<std::mutex> lock(launch_mutex);
  while (stack_pool.size() < threads) stack_pool.push_back(map_stack());
#if defined(__SANITIZE_ADDRESS__)
  if (stacks_dirty) {
    for (const Stack& s : stack_pool) __asan_unpoison_memory_region(s.bottom(), kStackBytes);
  }
#endif
  stacks_dirty = false;
  const uint64_t seed = base_seed();
  for (uint32_t linear : shuffled(static_cast<uint32_t>(blocks), splitmix64(seed ^ blocks))) {
    Block block;
    block.body = &thread_body;
    block.fibers.resize(threads);
    for (uint32_t t = 0; t < threads; ++t) {
      block.fibers[t].stack = stack_pool[t];
      block.fibers[t].coordinates =
          ThreadCoordinates{unflatten(t, block_dim), unflatten(linear, grid), block_dim, grid};
    }
    // A fresh OS thread per block: its thread_local __shared__ variables start zeroed, so no
    // block can read what another block left there.
    std::exception_ptr failure;
    std::thread runner([&] {
      try {
        run_block(block, seed, linear);
      } catch (...) {
        failure = std::current_exception();
      }
    });
    runner.join();
    if (!failure) failure = block.error;
    if (failure) {
      stacks_dirty = true;
      std::rethrow_exception(failure);
    }
  }
}

}  // namespace emulation
}  // namespace noisefuse
