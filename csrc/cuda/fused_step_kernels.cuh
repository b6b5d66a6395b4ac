// The CUDA kernels of noisefuse::fused_step_ (docs/kernel-contract.md, docs/backends/native.md),
// as templates: fused_step_variants_*.cu instantiate them, fused_step_cuda.cu is the op.
//
// Per table of tensors (multi_tensor_apply.cuh) two launches on the current stream:
//  1. fused_step_kernel: one block per 64K-element chunk. Thread 0 reads the tensor's step (and
//     Demon product) from device memory, computes its scalars in double (step_scalars.h) into
//     shared memory; then every thread updates kIlp elements per iteration, with one vector load
//     per operand when the tensor's pointers allow it.
//  2. advance_counters_kernel: one thread per tensor writes step + 1 and the new Demon product.
// Why two: every block of a tensor must read the *old* counter, and blocks of one launch run in no
// fixed order, so no block may write it. The second launch is ordered after all blocks of the
// first by the stream, costs one tiny kernel, and needs no host read of the step (capturable).
// AMP: both kernels read found_inf on the device and return at once when it is set, so a skipped
// step leaves params, state and counters untouched without a host synchronisation. A learning rate
// given as a tensor (lr_tensor) is read the same way, by thread 0 of each block, so an LR schedule
// that writes it in place reaches a captured graph.
// Noise (noisy_grad.cuh): the kind is a template parameter; for the kinds that read grad_sample the
// table's grad slot holds the rows' base pointer (row b at + b * numel), and for the kinds that
// draw normals the table carries each tensor's global offset. B, seed, std, scale are runtime
// values and the weights are read from device memory, so a noisy step stays capturable.
// Mixed precision: the state's storage type is a template parameter (float32 state for
// float16/bfloat16 params, bfloat16 state for float32 params), and so is the set of stores rounded
// stochastically to bfloat16 (kRound, StochasticStores: the params, the state). A launch that rounds
// draws each rounding word it uses once per group of four elements (philox::rounding_group_words:
// consecutive_draws), each store taking its own 16 bits of its element's words (store_bits), and
// its table carries the global offsets the draws are indexed by.
#pragma once

#include <type_traits>

#include <ATen/OpMathType.h>

#include "fused_step_launch.h"
#include "kernel_launch.cuh"
#include "multi_tensor_apply.cuh"
#include "noisefuse/bf16_rounding.h"
#include "noisefuse/dispatch_family.h"
#include "noisefuse/update_element.h"
#include "noisy_grad.cuh"

// Each launch_typed variant is instantiated in one fused_step_variants_*.cu file; what several of
// them share (the counter kernel of a table type) is merged by the linker like any template.
namespace noisefuse {
namespace cuda {

// kIlp consecutive elements, aligned so that one load/store instruction moves them.
template <typename T>
struct alignas(sizeof(T) * kIlp) Pack {
  T v[kIlp];
};

// The element-wise operands of one block's chunk; `m` is the buffer this step writes.
template <typename scalar_t, typename state_t>
struct ChunkPtrs {
  scalar_t* p;
  const scalar_t* g;  // grad, or grad_sample row 0 (rows BlockNoise::row_stride apart)
  state_t* m;
  const state_t* m_neg;
  state_t* v;
  state_t* vmax;
};

template <typename math_t>
struct Regs {
  math_t p[kIlp], g[kIlp], m[kIlp], mn[kIlp], v[kIlp], vm[kIlp];
};

template <typename scalar_t, typename math_t>
__device__ inline void load_pack(const scalar_t* src, int i, math_t* out) {
  const Pack<scalar_t> pack = *reinterpret_cast<const Pack<scalar_t>*>(src + i);
#pragma unroll
  for (int j = 0; j < kIlp; ++j) out[j] = static_cast<math_t>(pack.v[j]);
}

// One element's rounding draw: its rounding words (w0, w1) (bf16_rounding.h, store_bits).
struct RoundingDraw {
  uint32_t w0, w1;
};

// Whether the launch's set of stochastic stores (kRound) holds the params, the state.
constexpr bool rounds_params(int round) { return (round & kRoundParams) != 0; }
constexpr bool rounds_state(int round) { return (round & kRoundState) != 0; }

// The rounding words the launch's stochastic stores (kRound) read: w0 for the state's momentum and
// second moment, w1 for the params and the amsgrad maximum.
template <int kRound, int kSecond>
struct RoundingWordsRead {
  static constexpr bool reads(int word) {
    return reads_rounding_word(word, rounds_params(kRound), rounds_state(kRound), kSecond != kNoSecondMoment,
                               kSecond == kAmsgrad);
  }
  static constexpr bool kWord0 = reads(0);
  static constexpr bool kWord1 = reads(1);
};

// The Philox outputs of rounding group `group` for the words the launch reads (others left zero).
struct GroupWords {
  philox::Words w0, w1;
};
template <int kRound, int kSecond, typename math_t>
__device__ inline GroupWords group_words(const BlockNoise<math_t>& nz, uint64_t group) {
  using Read = RoundingWordsRead<kRound, kSecond>;
  GroupWords g{};
  if (Read::kWord0) g.w0 = philox::rounding_group_words(nz.seed, nz.step, group, 0u);
  if (Read::kWord1) g.w1 = philox::rounding_group_words(nz.seed, nz.step, group, 1u);
  return g;
}

// The draw of the element at `lane` (its global index & 3) of a group.
template <int kRound, int kSecond>
__device__ inline RoundingDraw pick_draw(const GroupWords& g, uint32_t lane) {
  using Read = RoundingWordsRead<kRound, kSecond>;
  return RoundingDraw{Read::kWord0 ? philox::group_word(g.w0, lane) : 0u,
                      Read::kWord1 ? philox::group_word(g.w1, lane) : 0u};
}

// The draw of the element at `position` (its group evaluated for it alone: the strided path).
template <int kRound, int kSecond, typename math_t>
__device__ inline RoundingDraw element_draw(const BlockNoise<math_t>& nz, int position) {
  if constexpr (kRound == kRoundNone) {
    return RoundingDraw{0u, 0u};
  } else {
    const uint64_t index = nz.index0 + static_cast<uint64_t>(position);
    return pick_draw<kRound, kSecond>(group_words<kRound, kSecond>(nz, index >> 2), static_cast<uint32_t>(index) & 3u);
  }
}

// Word k (0..7) of two consecutive groups' outputs `lo`, `hi` (k is a constant once unrolled).
__device__ inline uint32_t word_of_two(const philox::Words& lo, const philox::Words& hi, int k) {
  return k < 4 ? lo.x[k] : hi.x[k - 4];
}

// The draws of the kIlp = 4 consecutive elements from `position`: one Philox evaluation per word read
// when their first global index is a multiple of 4 (the usual case: every earlier tensor's size is),
// two otherwise, the second group evaluated under one uniform branch (the index modulo 4, lane0, is
// the chunk's), so that the longest path through the code is the real worst case. Element j takes
// word j + lane0 of the two groups' eight: group_word's three selects on lane0 over the four words
// from j, per word read.
template <int kRound, int kSecond, typename math_t>
__device__ inline void consecutive_draws(const BlockNoise<math_t>& nz, int position, RoundingDraw (&d)[kIlp]) {
  static_assert(kIlp == 4, "a thread's consecutive elements span at most two groups of four");
  using Read = RoundingWordsRead<kRound, kSecond>;
  if constexpr (kRound == kRoundNone) {
#pragma unroll
    for (int j = 0; j < kIlp; ++j) d[j] = RoundingDraw{0u, 0u};
  } else {
    const uint64_t first = nz.index0 + static_cast<uint64_t>(position);
    const uint32_t lane0 = static_cast<uint32_t>(first) & 3u;
    const GroupWords lo = group_words<kRound, kSecond>(nz, first >> 2);
    GroupWords hi = lo;  // read only where lane0 != 0
    if (lane0 != 0u) hi = group_words<kRound, kSecond>(nz, (first >> 2) + 1);
    const auto rotated = [&](const philox::Words& a, const philox::Words& b, int j) {
      const philox::Words window{{word_of_two(a, b, j), word_of_two(a, b, j + 1), word_of_two(a, b, j + 2),
                                  word_of_two(a, b, j + 3)}};
      return philox::group_word(window, lane0);
    };
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      d[j] = RoundingDraw{Read::kWord0 ? rotated(lo.w0, hi.w0, j) : 0u, Read::kWord1 ? rotated(lo.w1, hi.w1, j) : 0u};
    }
  }
}

// Value `x` of store kStore (RoundedStore) as stored in T: to nearest, or with kStochastic
// (bfloat16 storage) rounded with that store's bits of the element's draw.
template <bool kStochastic, int kStore, typename T, typename math_t>
__device__ inline T store_value(math_t x, const RoundingDraw& d) {
  if constexpr (kStochastic) {
    return T(stochastic_bf16_bits(static_cast<float>(x), store_bits(d.w0, d.w1, kStore)), T::from_bits());
  } else {
    return static_cast<T>(x);
  }
}

// The update of a thread's elements in registers; `root` receives the roots the update divides by
// (update_element's `root`).
template <bool kPn, int kSecond, typename math_t>
__device__ inline void update_regs(const ElementCoefs<math_t>& c, Regs<math_t>& r, math_t (&root)[kIlp]) {
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    update_element<kPn, kSecond, ScalarOps>(c, r.p[j], r.g[j], r.m[j], r.mn[j], r.v[j], r.vm[j], root[j]);
  }
}

template <bool kPn, int kSecond, typename math_t>
__device__ inline void update_regs(const ElementCoefs<math_t>& c, Regs<math_t>& r) {
  math_t root[kIlp];
  update_regs<kPn, kSecond>(c, r, root);
}

// Elements [i, i + kIlp) with one vector access per operand (and per grad_sample row); needs
// aligned pointers.
template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kNoise, int kRound, typename math_t>
__device__ inline void step_aligned(const ChunkPtrs<scalar_t, state_t>& x, int i, const ElementCoefs<math_t>& c,
                                    const BlockNoise<math_t>& nz) {
  Regs<math_t> r;
  const auto load_state = [&] {
    load_pack(x.p, i, r.p);
    load_pack(x.m, i, r.m);
    if (kPn) load_pack(x.m_neg, i, r.mn);
    if (kSecond != kNoSecondMoment) load_pack(x.v, i, r.v);
    if (kSecond == kAmsgrad) load_pack(x.vmax, i, r.vm);
  };
  // Without noise the state loads are issued before the gradient is formed, so that every
  // operand's load is in flight at once (the unscaling division's slow path keeps the compiler
  // from hoisting them itself); the registers do not grow (ptxas -v, sm_90). With noise they wait:
  // held across Philox or the row sums they would double the registers of most variants.
  if constexpr (kNoise == kNoNoise) load_state();
  const auto load_row = [&](int b, math_t* out) { load_pack(x.g + b * nz.row_stride, i, out); };
  form_grads<kNoise, kIlp>(load_row, [&](int j) { return i + j; }, c, nz, r.g);
  if constexpr (kNoise != kNoNoise) load_state();
  update_regs<kPn, kSecond>(c, r);
  constexpr bool kParams = rounds_params(kRound), kState = rounds_state(kRound);
  Pack<scalar_t> params;
  Pack<state_t> m, v, vmax;
  RoundingDraw draws[kIlp];
  consecutive_draws<kRound, kSecond>(nz, i, draws);
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const RoundingDraw& d = draws[j];
    params.v[j] = store_value<kParams, kParamStore, scalar_t>(r.p[j], d);
    m.v[j] = store_value<kState, kMomentumStore, state_t>(r.m[j], d);
    if (kSecond != kNoSecondMoment) v.v[j] = store_value<kState, kSecondMomentStore, state_t>(r.v[j], d);
    if (kSecond == kAmsgrad) vmax.v[j] = store_value<kState, kMaxSecondMomentStore, state_t>(r.vm[j], d);
  }
  *reinterpret_cast<Pack<scalar_t>*>(x.p + i) = params;
  *reinterpret_cast<Pack<state_t>*>(x.m + i) = m;
  if (kSecond != kNoSecondMoment) *reinterpret_cast<Pack<state_t>*>(x.v + i) = v;
  if (kSecond == kAmsgrad) *reinterpret_cast<Pack<state_t>*>(x.vmax + i) = vmax;
}

// Elements base + j * stride (j < kIlp) that are below n, one scalar access each; any alignment.
template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kNoise, int kRound, typename math_t>
__device__ inline void step_strided(const ChunkPtrs<scalar_t, state_t>& x, int base, int stride, int n,
                                    const ElementCoefs<math_t>& c, const BlockNoise<math_t>& nz) {
  Regs<math_t> r{};  // lanes past n compute on zeros and are never stored
  const auto load_row = [&](int b, math_t* out) {
    const scalar_t* row = x.g + b * nz.row_stride;
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int i = base + j * stride;
      out[j] = i < n ? static_cast<math_t>(row[i]) : math_t(0);
    }
  };
  form_grads<kNoise, kIlp>(load_row, [&](int j) { return base + j * stride; }, c, nz, r.g);
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const int i = base + j * stride;
    if (i < n) {
      r.p[j] = static_cast<math_t>(x.p[i]);
      r.m[j] = static_cast<math_t>(x.m[i]);
      if (kPn) r.mn[j] = static_cast<math_t>(x.m_neg[i]);
      if (kSecond != kNoSecondMoment) r.v[j] = static_cast<math_t>(x.v[i]);
      if (kSecond == kAmsgrad) r.vm[j] = static_cast<math_t>(x.vmax[i]);
    }
  }
  update_regs<kPn, kSecond>(c, r);
  constexpr bool kParams = rounds_params(kRound), kState = rounds_state(kRound);
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const int i = base + j * stride;
    if (i < n) {
      const RoundingDraw d = element_draw<kRound, kSecond>(nz, i);
      x.p[i] = store_value<kParams, kParamStore, scalar_t>(r.p[j], d);
      x.m[i] = store_value<kState, kMomentumStore, state_t>(r.m[j], d);
      if (kSecond != kNoSecondMoment) x.v[i] = store_value<kState, kSecondMomentStore, state_t>(r.v[j], d);
      if (kSecond == kAmsgrad) x.vmax[i] = store_value<kState, kMaxSecondMomentStore, state_t>(r.vm[j], d);
    }
  }
}

// Thread 0's scalar work for its block: the tensor's coefficients from its counters, written to
// shared memory. Not inlined, so the double-precision pow/sqrt do not add to the register pressure
// of the element loop (40-128 registers over the variants on sm_90, `ptxas -v`). It takes values
// only: a reference to the kernel's parameter table would make the compiler copy the table into
// local memory.
template <typename math_t>
__device__ __noinline__ void block_coefs(StepHyper h, double step, double prod, DeviceScalars scalars,
                                         ElementCoefs<math_t>* coefs, bool* odd, int64_t* t) {
  if (scalars.lr != nullptr) h.lr = *scalars.lr;
  const TensorScalars sc = tensor_scalars(h, step, prod);
  *odd = sc.odd;
  *t = sc.t;
  const float* grad_scale = scalars.grad_scale;
  *coefs = make_coefs<math_t, math_t>(h, sc, grad_scale != nullptr,
                                      grad_scale != nullptr ? static_cast<math_t>(*grad_scale) : math_t(1));
}

template <typename scalar_t>
__device__ inline bool is_aligned(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % (sizeof(scalar_t) * kIlp) == 0;
}

// Whether a launch indexes per-element draws (normals, rounding words) by global offset.
constexpr bool draws_per_element(int noise_kind, int round) {
  return noise_draws_normals(noise_kind) || round != kRoundNone;
}

template <int kLists, int kNoise, int kRound>
using StepTable = TensorTable<kLists, draws_per_element(kNoise, kRound)>;

// What every thread of a block knows after the block's prologue (block_start).
template <typename math_t>
struct BlockStart {
  int tensor;  // the table entry the block works on
  bool odd;    // PN: the parity of the step this update makes
  int64_t step;
  ElementCoefs<math_t> coefs;
};

// Thread 0 locates the block's tensor and computes its coefficients into shared memory; the barrier
// after it also orders any shared memory the other threads filled before calling this.
template <typename math_t, typename Table>
__device__ inline BlockStart<math_t> block_start(const Table& table, const StepHyper& h,
                                                 const DeviceScalars& scalars) {
  __shared__ int tensor_s;
  __shared__ bool odd_s;
  __shared__ ElementCoefs<math_t> coefs_s;
  __shared__ int64_t step_s;
  if (threadIdx.x == 0) {
    const int ti = locate_tensor(table, blockIdx.x);
    tensor_s = ti;
    block_coefs<math_t>(h, *table.steps[ti], h.track_beta1_prod ? *table.beta1_prods[ti] : 1.0, scalars, &coefs_s,
                        &odd_s, &step_s);
  }
  __syncthreads();
  return BlockStart<math_t>{tensor_s, odd_s, step_s, coefs_s};
}

// The noise values of the chunk at element `start` of table entry `ti`.
template <int kNoise, int kRound, typename math_t, typename Table>
__device__ inline BlockNoise<math_t> block_noise(const Table& table, int ti, int64_t start, int64_t step,
                                                 const NoiseHyper& noise, const float* weights) {
  return BlockNoise<math_t>{make_noise_coefs<math_t, math_t>(noise),
                            weights,
                            noise.seed,
                            (draws_per_element(kNoise, kRound) ? static_cast<uint64_t>(table.offsets[ti]) : 0) +
                                static_cast<uint64_t>(start),
                            static_cast<uint64_t>(step),
                            table.numel[ti],
                            noise.batch,
                            noise.centered};
}

// The blocks of kBlockThreads that the compiler must fit on an SM, for __launch_bounds__: two (at
// most 64 registers) for the amsgrad variants with float32 math, no noise and no stochastic
// rounding, which otherwise take 88-94 registers and one block per SM where torch's amsgrad kernel
// gets two; no requirement (0: ptxas's own choice) elsewhere. Not 1, and not 2 everywhere: either
// moves ptxas's choice for variants that fit already (a cap of 64 made the `single v` variants
// spill in their hot loop; an explicit 1 took float64 variants from 58-62 registers to 83-93).
template <typename scalar_t>
constexpr int min_blocks_per_sm(int second, int noise, int round) {
  return !std::is_same_v<scalar_t, double> && second == kAmsgrad && noise == kNoNoise && round == kRoundNone ? 2 : 0;
}

template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kLists, int kNoise, int kRound>
__global__ void __launch_bounds__(kBlockThreads, min_blocks_per_sm<scalar_t>(kSecond, kNoise, kRound))
    fused_step_kernel(const StepTable<kLists, kNoise, kRound> table, const StepHyper h, const DeviceScalars scalars,
                      const NoiseHyper noise, const float* weights) {
  using math_t = at::opmath_type<scalar_t>;
  if (scalars.found_inf != nullptr && *scalars.found_inf != 0.f) return;  // AMP overflow: the step is a no-op

  const BlockStart<math_t> block = block_start<math_t>(table, h, scalars);
  const int ti = block.tensor;
  const ElementCoefs<math_t> c = block.coefs;

  // The only 64-bit arithmetic: the chunk's offset. Inside a chunk, indices fit in 32 bits.
  const int64_t start = static_cast<int64_t>(blockIdx.x - table.first_block[ti]) * kChunkSize;
  const int n = static_cast<int>(min(kChunkSize, table.numel[ti] - start));
  auto param_list = [&](int list) { return static_cast<scalar_t*>(table.ptrs[list][ti]) + start; };
  auto state_list = [&](int list) { return static_cast<state_t*>(table.ptrs[list][ti]) + start; };
  const int pos_list = (kPn && !block.odd) ? 3 : 2;  // PN: exp_avgs (2) is "pos" at odd steps
  const ChunkPtrs<scalar_t, state_t> x{param_list(0),
                                       param_list(1),
                                       state_list(pos_list),
                                       kPn ? state_list(5 - pos_list) : nullptr,
                                       kSecond != kNoSecondMoment ? state_list(3 + kPn) : nullptr,
                                       kSecond == kAmsgrad ? state_list(4 + kPn) : nullptr};

  const BlockNoise<math_t> nz = block_noise<kNoise, kRound, math_t>(table, ti, start, block.step, noise, weights);

  bool aligned = is_aligned<scalar_t>(x.p) && is_aligned<scalar_t>(x.g) && is_aligned<state_t>(x.m);
  // Rows are aligned when the first is and each is a whole number of packs long.
  if (noise_reads_rows(kNoise)) aligned = aligned && table.numel[ti] % kIlp == 0;
  if (kPn) aligned = aligned && is_aligned<state_t>(x.m_neg);
  if (kSecond != kNoSecondMoment) aligned = aligned && is_aligned<state_t>(x.v);
  if (kSecond == kAmsgrad) aligned = aligned && is_aligned<state_t>(x.vmax);

  const int stride = blockDim.x;
  if (aligned) {
    const int full = n - n % kIlp;
    for (int i = threadIdx.x * kIlp; i < full; i += stride * kIlp) {
      step_aligned<scalar_t, state_t, kPn, kSecond, kNoise, kRound>(x, i, c, nz);
    }
    if (threadIdx.x < n - full) {  // the last n % kIlp elements of a tensor
      step_strided<scalar_t, state_t, kPn, kSecond, kNoise, kRound>(x, full + threadIdx.x, n, n, c, nz);
    }
  } else {
    for (int base = threadIdx.x; base < n; base += stride * kIlp) {
      step_strided<scalar_t, state_t, kPn, kSecond, kNoise, kRound>(x, base, stride, n, c, nz);
    }
  }
}

template <typename Table>
__global__ void advance_counters_kernel(const Table table, const StepHyper h, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.f) return;
  const int ti = blockIdx.x * blockDim.x + threadIdx.x;
  if (ti >= table.num_tensors) return;
  const int64_t t = next_step(*table.steps[ti]);
  if (h.track_beta1_prod) {
    *table.beta1_prods[ti] = next_beta1_prod(h, t, *table.beta1_prods[ti]);
  }
  *table.steps[ti] = static_cast<double>(t);
}

template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kNoise, int kRound>
void launch_fused_step(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const StepHyper& h,
                       const LaunchNoise& noise, const DeviceScalars& scalars) {
  constexpr int kLists = 3 + (kPn ? 1 : 0) + kSecond;
  constexpr bool kOffsets = draws_per_element(kNoise, kRound);
  using Table = StepTable<kLists, kNoise, kRound>;
  static_assert(sizeof(Table) <= kTableBytes, "the tensor table outgrew its share of the kernel arguments");
  static_assert(sizeof(Table) + sizeof(StepHyper) + sizeof(DeviceScalars) + sizeof(NoiseHyper) + sizeof(float*) <=
                    kKernelParamBytes,
                "the kernel arguments exceed CUDA's 4 KB parameter limit");
  multi_tensor_apply<kLists, kOffsets>(
      lists, l.steps, l.beta1_prods, noise.offsets, [&](const Table& table) {
        const int32_t blocks = table.first_block[table.num_tensors];
        if (blocks > 0) {  // a table of empty tensors only has counters to advance
          launch_kernel(fused_step_kernel<scalar_t, state_t, kPn, kSecond, kLists, kNoise, kRound>, blocks,
                        kBlockThreads, table, h, scalars, noise.hyper, noise.weights);
        }
        constexpr int kCounterThreads = 32 * ((Table::kMaxTensors + 31) / 32);
        launch_kernel(advance_counters_kernel<Table>, 1, kCounterThreads, table, h, scalars.found_inf);
      });
}

// fn(pn, second, kind) with the call's family flags and noise kind as integral constants.
template <typename Fn>
void dispatch_variant(const FusedStepLists& l, const LaunchNoise& noise, Fn&& fn) {
  using None = std::integral_constant<int, kNoNoise>;
  using Iso = std::integral_constant<int, kIsotropicNoise>;
  using Fisher = std::integral_constant<int, kDiagFisherNoise>;
  using Mult = std::integral_constant<int, kMultiplicativeNoise>;
  dispatch_family(l.pn(), l.second_moment(), l.amsgrad(), [&](auto pn, auto second) {
    switch (noise.hyper.kind) {
      case kIsotropicNoise: return fn(pn, second, Iso{});
      case kDiagFisherNoise: return fn(pn, second, Fisher{});
      case kMultiplicativeNoise: return fn(pn, second, Mult{});
      default: return fn(pn, second, None{});
    }
  });
}

template <typename scalar_t, typename state_t, int kRound>
void launch_typed(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const StepHyper& h,
                  const LaunchNoise& noise, const DeviceScalars& scalars) {
  dispatch_variant(l, noise, [&](auto pn, auto second, auto kind) {
    launch_fused_step<scalar_t, state_t, decltype(pn)::value, decltype(second)::value, decltype(kind)::value, kRound>(
        lists, l, h, noise, scalars);
  });
}

}  // namespace cuda
}  // namespace noisefuse
