// The plain-data description of one CPU fused step, handed from the op (fused_step_cpu.cpp) to a
// kernel build (fused_step_cpu_kernel.h, compiled once per instruction set). Only raw pointers
// and numbers cross this boundary, so the AVX2 build touches no torch object.
#pragma once

#include <cstdint>

#include "noisefuse/blockwise_codes.h"
#include "noisefuse/noise_element.h"
#include "noisefuse/step_scalars.h"

namespace noisefuse {

// kCodes8: 8-bit blockwise state, uint8 codes with one float32 scale per block (CpuStep::block_size).
enum class CpuDtype : int { kFloat, kDouble, kHalf, kBFloat16, kCodes8 };

// One tensor's element-wise operands; `m` is the buffer the step writes (PN's positive buffer).
struct CpuTensor {
  void* p;
  const void* g;      // grad, or row 0 of grad_sample (rows laid out like p) when the noise reads rows
  void* m;
  const void* m_neg;  // PN only
  void* v;            // second moment only
  void* vmax;         // amsgrad only
  int64_t numel;
  uint64_t offset;  // global index of element 0 (noise, stochastic rounding)
  TensorScalars scalars;
  // 8-bit state only: the scales of m, m_neg, v and vmax, one per block of the flat index, else null.
  float* m_scales;
  const float* m_neg_scales;
  float* v_scales;
  float* vmax_scales;
};

struct CpuStep {
  const CpuTensor* tensors;
  int64_t num_tensors;
  StepHyper hyper;
  bool has_grad_scale;
  float grad_scale;
  CpuDtype dtype;        // the params' (and grads')
  CpuDtype state_dtype;  // the state buffers': dtype, kFloat for kHalf/kBFloat16 params, kBFloat16 for kFloat
                         // params, or kCodes8 for kFloat/kBFloat16 params
  bool pn;
  int second_moment;  // SecondMoment
  NoiseHyper noise;      // with the stochastic rounding flags (params, state)
  const float* weights;  // multiplicative noise: the step's B weights, else null
  int64_t block_size;        // 8-bit state (state_dtype kCodes8): elements per scale, a power of two in [16, 2048]
  const float* code_books;   // 8-bit state: the float32 [4, 256] table (noisefuse/state/maps.py), else null
  const CodeRow* code_rows;  // 8-bit state: code_rows(code_books), else null
};

// Elements per parallel work item: a multiple of every vector width and of the largest 8-bit block
// (2048: blocks never straddle chunks), big enough that scheduling costs nothing next to the work,
// small enough to balance a few large tensors over the threads.
constexpr int64_t kCpuChunk = 32768;

// The 4 rows of a [4, 256] code-book table as noisefuse/blockwise_codes.h reads them: built at the
// first call with these books (bit for bit), then kept for the life of the process (code_rows.cpp).
const CodeRow* code_rows(const float* code_books);

namespace cpu_default {
void run_cpu_step(const CpuStep& step);
}
namespace cpu_avx2 {
// False when this build has no AVX2 kernel (not x86-64 GCC); the caller also checks the CPU.
extern const bool kCompiled;
void run_cpu_step(const CpuStep& step);
}  // namespace cpu_avx2

}  // namespace noisefuse
