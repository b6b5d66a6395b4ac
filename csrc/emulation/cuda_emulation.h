// The CUDA emulation: a host meaning for the CUDA constructs noisefuse's kernels use, so that the
// kernel sources of csrc/cuda compile unchanged with the host C++ compiler and run on the CPU
// (docs/backends/native.md, "The CUDA emulation"). A test tool: it is built by the test suite
// (tests/cuda_emulation.py), never into the package.
//
// Execution model, as CUDA defines it and no more:
//  - a launch runs every block of its grid, one block at a time, in a shuffled order (never
//    0..N-1), so that a kernel that depends on the order of its blocks goes wrong here;
//  - the threads of a block are fibers on one OS thread (cuda_emulation.cpp). Between two
//    barriers each runs until it reaches `__syncthreads()` or returns, in an order shuffled anew
//    for every phase, so a read of another thread's write that lacks a barrier sees the wrong value,
//    deterministically (the shuffles are seeded; NOISEFUSE_EMULATION_SEED changes the seed);
//  - a barrier that some threads of a block reach and others never do (they returned, or wait at
//    a barrier of another count) is an error, as on the hardware it would hang or misbehave;
//  - `__shared__` variables are thread_local statics, and every block runs on an OS thread of
//    its own: each block starts with its own zeroed shared memory, never another block's.
// What it cannot see: warps (no lockstep, no shuffles or votes), memory ordering and visibility
// between blocks, alignment faults of vector accesses, timing, and the device math library (the
// host's libm and no fused multiply-add contraction). Memory is host memory: built with
// AddressSanitizer, every access of a kernel is bounds-checked against the CPU tensors it touches.
#pragma once

// Everything the C++ library and torch declare is parsed first, under its host meaning: the
// macros below would otherwise rewrite them (libstdc++ spells an attribute `__noinline__`).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceType.h>
#include <c10/macros/Macros.h>

#include "emulation_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __syncthreads() ::noisefuse::emulation::sync_threads()
#define threadIdx (::noisefuse::emulation::coordinates().thread_idx)
#define blockIdx (::noisefuse::emulation::coordinates().block_idx)
#define blockDim (::noisefuse::emulation::coordinates().block_dim)
#define gridDim (::noisefuse::emulation::coordinates().grid_dim)

// Device code proper from here on: the `#if defined(__CUDA_ARCH__)` branches of noisefuse's own
// headers are the ones compiled and run, with the intrinsics they call given below. Their inline
// functions get an ISA namespace of their own (noisefuse/isa.h), apart from the host branches
// that the host code of the same library compiles.
#define __CUDA_ARCH__ 900
#define NF_ISA_NS isa_cuda_emulation

// CUDA's device min/max of two integers or floats.
template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
inline T max(T a, T b) {
  return a < b ? b : a;
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
// Atomics: the threads of a block are fibers that switch only at barriers, so a read-modify-write
// is never interleaved with another thread's.
inline unsigned int atomicMax(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  if (value > old) *address = value;
  return old;
}
// Round-to-nearest float arithmetic that is never contracted into a fused multiply-add (the
// emulation is built with -ffp-contract=off, so plain operators already are not).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
// CUDA's fast division is approximate; its only user (the 8-bit kernel's bucket guess) is correct
// for any value, so the host's division stands in for it.
inline float __fdividef(float a, float b) { return a / b; }
// The correctly rounded square root (IEEE 754's sqrt, as std::sqrt is).
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
