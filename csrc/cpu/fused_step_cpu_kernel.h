// The CPU kernel body, compiled once per instruction set: fused_step_cpu.cpp builds it for the
// baseline ISA (namespace cpu_default), fused_step_cpu_avx2.cpp for AVX2+FMA (namespace cpu_avx2).
// The including file defines NF_CPU_KERNEL_NS (and, for AVX2, NF_ISA_NS: see noisefuse/isa.h);
// at::vec picks its vector width from the CPU_CAPABILITY macros in force, so the two builds are
// distinct types and functions in distinct namespaces.
//
// Each tensor is cut into kCpuChunk-element chunks; at::parallel_for spreads the flat chunk range
// over the intra-op threads; a chunk is updated one at::vec vector at a time (float16/bfloat16
// widened to two float32 vectors, rounded once on store), the tensor's last partial vector with
// partial loads/stores.
//
// Mixed precision (docs/kernel-contract.md, "Mixed precision"): the state's storage type is a
// second template parameter (float32 state for float16/bfloat16 params is loaded as the float
// vectors the param's vector widens to, bfloat16 state of float32 params widened into the param's
// float vector), and bfloat16 params and bfloat16 state may be rounded stochastically on store,
// every store of an element from its own 16 bits of one Philox draw, drawn for a block of 64
// elements at a time (runtime flags: they change no traffic).
//
// Gradient noise (docs/kernel-contract.md, "Noise") is formed per vector in registers: the
// grad_sample rows of the vector's elements are loaded one row at a time and summed (the rows of
// one element lie numel apart), normals come from a 64-element block buffer filled for the block's
// global indices (cpu_normals.h), and the result goes straight into the update. The noise kind is a template
// parameter: it decides what is read (grad or B rows) and whether Philox runs at all.
//
// 8-bit blockwise state (docs/kernel-contract.md, "8-bit blockwise state") is stepped through
// float32: a chunk goes kQuantSpan elements at a time, whose blocks are dequantized into float32
// buffers on the stack (cpu_blockwise.h), updated by the float32-state kernel of the same params
// (the very update, noise and param rounding above, on those buffers), and the buffers the step
// writes quantized back block by block.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "bf16_store_avx2.h"
#include "cpu_blockwise.h"
#include "cpu_normals.h"
#include "cpu_step.h"
#include "noisefuse/bf16_rounding.h"
#include "noisefuse/dispatch_family.h"
#include "noisefuse/noise_element.h"
#include "noisefuse/update_element.h"

#ifndef NF_CPU_KERNEL_NS
#error "define NF_CPU_KERNEL_NS before including fused_step_cpu_kernel.h"
#endif

namespace noisefuse {
namespace NF_CPU_KERNEL_NS {
namespace {

using at::vec::Vectorized;

struct VecOps {
  template <typename V>
  static V neg(const V& x) {
    return x.neg();
  }
  template <typename V>
  static V sqrt(const V& x) {
    return x.sqrt();
  }
  template <typename V>
  static V max(const V& a, const V& b) {
    return at::vec::maximum(a, b);  // propagates NaN like torch.maximum
  }
};

// Loads `count` elements at ptr as math-type vectors and stores them back: float and double are
// one vector, float16/bfloat16 fill two float vectors. Full vectors use the fixed-size access,
// only a tensor's tail the variable-length one.
template <typename scalar_t, typename Enable = void>
struct VecIO {
  using Vec = Vectorized<scalar_t>;
  static constexpr int64_t kWidth = Vec::size();
  static constexpr int kParts = 1;
  static void load(const scalar_t* ptr, int64_t count, Vec* out) {
    out[0] = count == kWidth ? Vec::loadu(ptr) : Vec::loadu(ptr, count);
  }
  static void store(scalar_t* ptr, int64_t count, const Vec* in) {
    if (count == kWidth) in[0].store(ptr);
    else in[0].store(ptr, count);
  }
};

template <typename scalar_t>
struct VecIO<scalar_t, std::enable_if_t<std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>>> {
  using Vec = Vectorized<float>;
  using Raw = Vectorized<scalar_t>;
  static constexpr int64_t kWidth = Raw::size();
  static constexpr int kParts = 2;
  static void load(const scalar_t* ptr, int64_t count, Vec* out) {
    const Raw raw = count == kWidth ? Raw::loadu(ptr) : Raw::loadu(ptr, count);
    auto [lo, hi] = at::vec::convert_to_float<scalar_t>(raw);
    out[0] = lo;
    out[1] = hi;
  }
  static void store(scalar_t* ptr, int64_t count, const Vec* in) {
    const Raw raw = at::vec::convert_from_float<scalar_t>(in[0], in[1]);
    if (count == kWidth) raw.store(ptr);
    else raw.store(ptr, count);
  }
};

template <typename scalar_t>
constexpr bool kReducedFloat = std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>;

// The state operands of one param vector: VecIO of the param's type when the state has it; for
// float32 state of a float16/bfloat16 param, the IO::kParts float vectors that the param's
// IO::kWidth elements widen to, loaded and stored as they are (no rounding); for bfloat16 state of
// a float32 param, the param's one float vector.
template <typename state_t, typename scalar_t, typename Enable = void>
struct StateIO : VecIO<scalar_t> {
  static_assert(std::is_same_v<state_t, scalar_t>,
                "state of another type than the param's: float32 (float16/bfloat16 params) or bfloat16 (float32)");
};

template <typename scalar_t>
struct StateIO<float, scalar_t, std::enable_if_t<kReducedFloat<scalar_t>>> {
  using Vec = Vectorized<float>;
  static constexpr int64_t kWidth = VecIO<scalar_t>::kWidth;
  static constexpr int kParts = VecIO<scalar_t>::kParts;
  static_assert(kParts * Vec::size() == kWidth, "one float vector per part of the param's vector");

  // Elements of part k among the `count` of the call.
  static int64_t part_count(int64_t count, int k) {
    return std::clamp<int64_t>(count - k * Vec::size(), 0, Vec::size());
  }
  static void load(const float* ptr, int64_t count, Vec* out) {
    for (int k = 0; k < kParts; ++k) {
      const int64_t n = part_count(count, k);
      out[k] = n == Vec::size() ? Vec::loadu(ptr + k * Vec::size()) : Vec::loadu(ptr + k * Vec::size(), n);
    }
  }
  static void store(float* ptr, int64_t count, const Vec* in) {
    for (int k = 0; k < kParts; ++k) {
      const int64_t n = part_count(count, k);
      if (n == Vec::size()) in[k].store(ptr + k * Vec::size());
      else if (n > 0) in[k].store(ptr + k * Vec::size(), n);
    }
  }
};

// bfloat16 state of a float32 param: kWidth bfloat16s widened into one float vector, and stored
// back to nearest: a full vector of the AVX2 build by nearest_bf16_store8, otherwise through
// convert_from_float's lower half. A full vector reads exactly its kWidth elements
// (load_to_float), a tail the variable-length access of a bfloat16 vector.
template <>
struct StateIO<c10::BFloat16, float> {
  using Vec = Vectorized<float>;
  using Raw = Vectorized<c10::BFloat16>;  // 2 * kWidth lanes, the first kWidth used
  static constexpr int64_t kWidth = Vec::size();
  static constexpr int kParts = 1;
  static void load(const c10::BFloat16* ptr, int64_t count, Vec* out) {
    if (count == kWidth) at::vec::load_to_float(ptr, out[0]);
    else out[0] = std::get<0>(at::vec::convert_to_float<c10::BFloat16>(Raw::loadu(ptr, count)));
  }
  static void store(c10::BFloat16* ptr, int64_t count, const Vec* in) {
#if defined(NF_BF16_STORE_AVX2)
    if (count == kWidth) return nearest_bf16_store8(ptr, in[0]);
#endif
    const Raw raw = at::vec::convert_from_float<c10::BFloat16>(in[0], in[0]);
    if (count == kWidth) raw.store(ptr, kWidth);
    else raw.store(ptr, count);
  }
};

// What the noise and the rounding read besides each tensor's own operands: the per-call values in
// the math type.
template <typename Vec, typename math_t>
struct StreamInputs {
  NoiseCoefs<Vec> coefs;
  const math_t* weights;  // multiplicative: the B weights, converted once per call
  uint64_t seed;
  int32_t batch;
  bool centered;
  bool stochastic_rounding;        // bfloat16 params only
  bool stochastic_state_rounding;  // bfloat16 state only
};

template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kNoise>
struct ChunkKernel {
  using IO = VecIO<scalar_t>;
  using SIO = StateIO<state_t, scalar_t>;
  using Vec = typename IO::Vec;
  using math_t = typename Vec::value_type;
  static constexpr int kParts = IO::kParts;
  static constexpr bool kMayRoundParams = std::is_same_v<scalar_t, c10::BFloat16>;
  static constexpr bool kMayRoundState = std::is_same_v<state_t, c10::BFloat16>;

  scalar_t* p;
  const scalar_t* g;  // grad, or grad_sample row 0 when kNoise reads rows
  state_t* m;
  const state_t* m_neg;
  state_t* v;
  state_t* vmax;
  int64_t numel;    // distance between two rows of grad_sample
  uint64_t offset;  // global index of element 0
  uint64_t step;    // the tensor's step after this update's increment
  // 8-bit state (QuantizedKernel): store the root the update divided by, which the codes are of,
  // in place of the value (v without amsgrad, vmax with it), instead of taking it again.
  bool stores_root = false;

  // Per-element draws (the normals of the kinds that use them, the rounding words) are made a block
  // of kDrawBlock elements at a time (Philox over whole vectors of lanes, cpu_normals.h), into
  // stack buffers that the block's vectors then read: 64 elements, a multiple of every IO::kWidth
  // and of 32K (chunks stay whole).
  static constexpr bool kDrawsNormals = kNoise == kIsotropicNoise || kNoise == kDiagFisherNoise;
  static constexpr int kDrawBlock = 64;
  static_assert(kDrawBlock % IO::kWidth == 0 && kCpuChunk % kDrawBlock == 0, "blocks of whole vectors");
  static constexpr uint32_t kTag = kNoise == kIsotropicNoise ? philox::kTagIsotropic : philox::kTagDiagFisher;

  // The normals of the vector's IO::kWidth elements (`lanes`, from the block buffer) in the math
  // type, kParts vectors.
  static void normals(const float* lanes, Vec* xi) {
    if constexpr (std::is_same_v<math_t, double>) {
      alignas(64) double wide[Vec::size()];
      for (int l = 0; l < Vec::size(); ++l) wide[l] = static_cast<double>(lanes[l]);
      xi[0] = Vec::loadu(wide);
    } else {
      for (int k = 0; k < kParts; ++k) xi[k] = Vec::loadu(lanes + k * Vec::size());
    }
  }

  void load_row(int64_t b, int64_t i, int64_t count, const ElementCoefs<Vec>& c, Vec* r) const {
    IO::load(g + b * numel + i, count, r);
    for (int k = 0; k < kParts; ++k) r[k] = preprocess_grad<VecOps>(r[k], c);
  }

  // SPEC section 0 steps 1-3 for elements [i, i + count) of a kind that reads `grad`: the gradient
  // the update uses.
  void form_grad(int64_t i, int64_t count, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz,
                 const float* lanes, Vec* out) const {
    load_row(0, i, count, c, out);
    if constexpr (kNoise == kIsotropicNoise) {
      Vec xi[kParts];
      normals(lanes, xi);
      for (int k = 0; k < kParts; ++k) out[k] = isotropic_grad(out[k], nz.coefs, xi[k]);
    }
  }

  // Kinds that read grad_sample rows form the gradient of a block of kRowBlock elements before the
  // block is updated: row b's segment of the block is read in one sequential sweep, then row b + 1's,
  // into per-element sums that stay in L1 (2 x 8 KB for float math). Summing a vector's B rows one
  // after another instead keeps B + 4 memory streams open at once, more than the hardware
  // prefetchers follow: rows then came in at half a copy's bandwidth. Each element still sums its
  // rows in order b = 0, 1, ..., so the sums are the same to the bit.
  static constexpr int64_t kRowBlock = 2048;
  static_assert(kRowBlock % kDrawBlock == 0 && kCpuChunk % kRowBlock == 0, "row blocks of whole draw blocks");

  struct RowBlock {
    alignas(64) math_t mean[kRowBlock];     // sum_b w_b r_b (multiplicative) or sum_b r_b, then / B
    alignas(64) math_t squares[kRowBlock];  // diag_fisher: sum_b r_b^2, or of (r_b - mean)^2 when centered
  };

  // Applies `row_op(b, r, total, squares)` to every row b over the block [begin, end), one IO
  // vector at a time (`r`, `total`, `squares`: its kParts vectors of row values and sums). Rows go
  // kRowGroup at a time: the sums of a vector are loaded once, take the group's rows in order, and
  // are stored once (kRowGroup streams at a time, and a quarter of the sums' loads and stores).
  static constexpr int64_t kRowGroup = 8;

  template <typename RowOp>
  void sweep_rows(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, int32_t batch, RowBlock& sums,
                  const RowOp& row_op) const {
    for (int64_t group = 0; group < batch; group += kRowGroup) {
      const int64_t group_end = std::min<int64_t>(group + kRowGroup, batch);
      for (int64_t i = begin; i < end; i += IO::kWidth) {
        const int64_t count = std::min<int64_t>(IO::kWidth, end - i);
        Vec total[kParts], squares[kParts];
        math_t* const t = sums.mean + (i - begin);
        math_t* const q = sums.squares + (i - begin);
        for (int k = 0; k < kParts; ++k) {
          total[k] = Vec::loadu(t + k * Vec::size());
          if constexpr (kNoise == kDiagFisherNoise) squares[k] = Vec::loadu(q + k * Vec::size());
        }
        for (int64_t b = group; b < group_end; ++b) {
          Vec r[kParts];
          load_row(b, i, count, c, r);
          row_op(b, r, total, squares);
        }
        for (int k = 0; k < kParts; ++k) {
          total[k].store(t + k * Vec::size());
          if constexpr (kNoise == kDiagFisherNoise) squares[k].store(q + k * Vec::size());
        }
      }
    }
  }

  // The means (and Fisher sums) of elements [begin, end), the block starting at `begin`. Lanes of
  // a partial last vector load as zeros and stay unused.
  void sum_rows(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz,
                RowBlock& sums) const {
    const int64_t padded = (end - begin + IO::kWidth - 1) / IO::kWidth * IO::kWidth;
    std::fill_n(sums.mean, padded, math_t(0));
    if constexpr (kNoise == kDiagFisherNoise) std::fill_n(sums.squares, padded, math_t(0));
    sweep_rows(begin, end, c, nz.batch, sums, [&](int64_t b, const Vec* r, Vec* total, Vec* squares) {
      for (int k = 0; k < kParts; ++k) {
        if constexpr (kNoise == kMultiplicativeNoise) {
          RowSums<Vec> acc{total[k], Vec(math_t(0))};
          add_weighted_row(acc, Vec(nz.weights[b]), r[k]);
          total[k] = acc.total;
        } else {
          RowSums<Vec> acc{total[k], squares[k]};
          add_fisher_row(acc, r[k], nz.centered);
          total[k] = acc.total;
          squares[k] = acc.squares;
        }
      }
    });
    for (int64_t i = 0; i < padded; i += Vec::size()) {
      const RowSums<Vec> acc{Vec::loadu(sums.mean + i), Vec(math_t(0))};
      row_mean(acc, nz.coefs).store(sums.mean + i);
    }
    if constexpr (kNoise == kDiagFisherNoise) {
      if (nz.centered) {  // the second pass, once the means are known; the block's rows are in L2 now
        sweep_rows(begin, end, c, nz.batch, sums, [&](int64_t, const Vec* r, Vec* mean, Vec* squares) {
          for (int k = 0; k < kParts; ++k) {
            RowSums<Vec> acc{mean[k], squares[k]};
            add_deviation(acc, r[k], mean[k]);
            squares[k] = acc.squares;
          }
        });
      }
    }
  }

  // The gradient of the vector at element `at` of a row block, from its sums (and normals).
  void block_grad(const RowBlock& sums, int64_t at, const StreamInputs<Vec, math_t>& nz, const float* lanes,
                  Vec* out) const {
    for (int k = 0; k < kParts; ++k) out[k] = Vec::loadu(sums.mean + at + k * Vec::size());
    if constexpr (kNoise == kDiagFisherNoise) {
      Vec xi[kParts];
      normals(lanes, xi);
      for (int k = 0; k < kParts; ++k) {
        const RowSums<Vec> acc{out[k], Vec::loadu(sums.squares + at + k * Vec::size())};
        out[k] = fisher_grad<VecOps>(out[k], acc, nz.coefs, xi[k]);
      }
    }
  }

  // The rounding words (store_bits) of a run of elements, as the stores read them: null where the
  // store is to nearest.
  struct RoundingWords {
    const uint32_t* param;    // when the params are rounded stochastically
    const uint32_t* moments;  // the momentum and the second moment, when the state is
    const uint32_t* maximum;  // the amsgrad maximum, when the state is
  };

  // Stores elements [0, count) of the vectors `in` into `dst` through `StoreIO`: to nearest, or,
  // when `word` is given (bfloat16 storage only), stochastically with the bits of kStore in it.
  template <typename StoreIO, int kStore, typename T>
  static void store_operand(T* dst, int64_t count, const Vec* in, const uint32_t* word) {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (word != nullptr) return store_stochastic<kStore>(dst, count, in, word);
    }
    StoreIO::store(dst, count, in);
  }

  // The stochastic store: a full vector of the AVX2 build from its registers, 8 lanes at a time;
  // otherwise and for the tail element by element (the same bits either way).
  template <int kStore>
  static void store_stochastic(c10::BFloat16* dst, int64_t count, const Vec* in, const uint32_t* word) {
#if defined(NF_BF16_STORE_AVX2)
    if constexpr (std::is_same_v<math_t, float>) {
      static_assert(Vec::size() == 8, "the AVX2 stores take 8-float vectors");
      if (count == IO::kWidth) {
        for (int k = 0; k < kParts; ++k) stochastic_bf16_store8<kStore & 1>(dst + 8 * k, in[k], word + 8 * k);
        return;
      }
    }
#endif
    alignas(64) float x[IO::kWidth];
    for (int k = 0; k < kParts; ++k) in[k].store(x + k * Vec::size());
    for (int64_t l = 0; l < count; ++l) {
      const uint32_t r = word_bits(word[l], kStore);
      dst[l] = c10::BFloat16(stochastic_bf16_bits(x[l], r), c10::BFloat16::from_bits());
    }
  }

  // Updates elements [i, i + count), count <= IO::kWidth, with their gradient `rg`.
  void update_vector(int64_t i, int64_t count, const ElementCoefs<Vec>& c, Vec* rg, const RoundingWords& w) const {
    Vec rp[kParts], rm[kParts], rmn[kParts], rv[kParts], rvm[kParts], root[kParts];
    IO::load(p + i, count, rp);
    SIO::load(m + i, count, rm);
    if (kPn) SIO::load(m_neg + i, count, rmn);
    if (kSecond != kNoSecondMoment) SIO::load(v + i, count, rv);
    if (kSecond == kAmsgrad) SIO::load(vmax + i, count, rvm);
    for (int k = 0; k < kParts; ++k) {
      update_element<kPn, kSecond, VecOps>(c, rp[k], rg[k], rm[k], rmn[k], rv[k], rvm[k], root[k]);
    }
    const Vec* stored_v = stores_root && kSecond == kSecondMoment ? root : rv;
    const Vec* stored_vmax = stores_root ? root : rvm;
    store_operand<IO, kParamStore>(p + i, count, rp, w.param);
    static_assert(rounding_word_of(kMomentumStore) == rounding_word_of(kSecondMomentStore), "one moments word");
    store_operand<SIO, kMomentumStore>(m + i, count, rm, w.moments);
    if (kSecond != kNoSecondMoment) store_operand<SIO, kSecondMomentStore>(v + i, count, stored_v, w.moments);
    if (kSecond == kAmsgrad) store_operand<SIO, kMaxSecondMomentStore>(vmax + i, count, stored_vmax, w.maximum);
  }

  // Elements [begin, end) as whole vectors and a partial last one. `lanes`: the normals of element
  // `begin` on (or null); `w`: its rounding words; `sums`: the row block holding [begin, end),
  // which starts at `block` (kinds that read rows). Flattened: GCC's inliner left the update and
  // the bfloat16 stores of some instantiations as calls, a call per vector with its operands through
  // memory (the bfloat16-state step ran 1.5x its float32-state step, rounding to nearest).
  [[gnu::flatten]] void step_vectors(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz,
                    const float* lanes, const RoundingWords& w, const RowBlock* sums, int64_t block) const {
    const auto from = [&](const uint32_t* words, int64_t i) {
      return words == nullptr ? nullptr : words + (i - begin);
    };
    for (int64_t i = begin; i < end; i += IO::kWidth) {
      const int64_t count = std::min<int64_t>(IO::kWidth, end - i);
      const float* vector_lanes = lanes == nullptr ? nullptr : lanes + (i - begin);
      Vec rg[kParts];
      if constexpr (noise_reads_rows(kNoise)) block_grad(*sums, i - block, nz, vector_lanes, rg);
      else form_grad(i, count, c, nz, vector_lanes, rg);
      update_vector(i, count, c, rg, RoundingWords{from(w.param, i), from(w.moments, i), from(w.maximum, i)});
    }
  }

  // Elements [begin, end) of one row block (the whole range for kinds that read no rows), with the
  // per-element draws made for 64 elements at a time: the rounding words the stochastic stores read
  // (w0 for the state's momentum and second moment, w1 for the params and the amsgrad maximum; a
  // Philox evaluation per word and group of four elements). A partial last draw block draws a few
  // values it does not use (their lanes lie past the tensor).
  void step_block(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz,
                  const RowBlock* sums) const {
    const bool round_params = kMayRoundParams && nz.stochastic_rounding;
    const bool round_state = kMayRoundState && nz.stochastic_state_rounding;
    const bool rounds = round_params || round_state;
    if (!kDrawsNormals && !rounds) {
      step_vectors(begin, end, c, nz, nullptr, RoundingWords{}, sums, begin);
      return;
    }
    const bool word0 = reads_rounding_word(0, round_params, round_state, kSecond != kNoSecondMoment, kSecond == kAmsgrad);
    const bool word1 = reads_rounding_word(1, round_params, round_state, kSecond != kNoSecondMoment, kSecond == kAmsgrad);
    alignas(64) float lanes[kDrawBlock];
    alignas(64) uint32_t w0[kDrawBlock + 4], w1[kDrawBlock + 4];
    for (int64_t draws = begin; draws < end; draws += kDrawBlock) {
      const uint64_t index0 = offset + static_cast<uint64_t>(draws);
      if constexpr (kDrawsNormals) fill_normals<kDrawBlock>(nz.seed, step, kTag, index0, lanes);
      const int skip = static_cast<int>(index0 & 3u);  // element index0's place in the words
      if (word0) fill_rounding_words<kDrawBlock>(nz.seed, step, index0, 0u, w0);
      if (word1) fill_rounding_words<kDrawBlock>(nz.seed, step, index0, 1u, w1);
      // Element `draws`'s words of store `store`, where it rounds stochastically.
      const auto words = [&](int store, bool rounded) -> const uint32_t* {
        return rounded ? (rounding_word_of(store) == 0 ? w0 : w1) + skip : nullptr;
      };
      const RoundingWords w{words(kParamStore, round_params), words(kMomentumStore, round_state),
                            words(kMaxSecondMomentStore, round_state && kSecond == kAmsgrad)};
      step_vectors(draws, std::min<int64_t>(draws + kDrawBlock, end), c, nz, kDrawsNormals ? lanes : nullptr, w,
                   sums, begin);
    }
  }

  void step_range(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz) const {
    if constexpr (noise_reads_rows(kNoise)) {
      RowBlock sums;
      for (int64_t block = begin; block < end; block += kRowBlock) {
        const int64_t block_end = std::min<int64_t>(block + kRowBlock, end);
        sum_rows(block, block_end, c, nz, sums);
        step_block(block, block_end, c, nz, &sums);
      }
    } else {
      step_block(begin, end, c, nz, nullptr);
    }
  }
};

// The 8-bit state of one tensor: uint8 codes with a float32 scale per block of `block_size`
// elements, stepped a span at a time (kShortSpan elements or one block, whichever is more; kQuantSpan
// where the noise reads grad_sample rows, whose row blocks are that long) by the float32-state
// kernel `Float` on stack buffers. A span is whole blocks (the last block of a tensor may be short)
// and starts at a multiple of its size; `scales + start / block_size` is the first scale of the span
// at `start`. Every element's draws are indexed by its place in the tensor, so the span size changes
// no value.
template <typename scalar_t, bool kPn, int kSecond, int kNoise>
struct QuantizedKernel {
  using Float = ChunkKernel<scalar_t, float, kPn, kSecond, kNoise>;
  using Vec = typename Float::Vec;
  using math_t = typename Float::math_t;
  static constexpr int64_t kQuantSpan = 2048;  // the largest block
  static constexpr int64_t kShortSpan = 512;   // a power of two: spans start at its multiples
  static_assert(kCpuChunk % kQuantSpan == 0 && kQuantSpan % Float::kRowBlock == 0,
                "chunks of whole spans, spans of whole row blocks");

  const CpuTensor& t;
  int64_t block_size;
  const float* books;    // [4, 256], rows CodeBookRow
  const CodeRow* rows;   // the same rows for the O(1) code decision (code_rows)

  static uint8_t* codes(void* buffer) { return static_cast<uint8_t*>(buffer); }

  // Buffer `out` (n elements from `start`) from its codes and scales.
  template <bool kSquared>
  void dequantize(const uint8_t* codes_at, const float* scales, int row, int64_t start, int64_t n, float* out) const {
    for (int64_t k = 0; k < n; k += block_size) {
      dequantize_block<kSquared>(codes_at + start + k, books + row * kNumCodes, scales[(start + k) / block_size],
                                 std::min(block_size, n - k), out + k);
    }
  }

  void quantize(const float* x, int row, int64_t start, int64_t n, float* scales, uint8_t* codes_at) const {
    for (int64_t k = 0; k < n; k += block_size) {
      quantize_block(x + k, std::min(block_size, n - k), rows[row], scales + (start + k) / block_size,
                     codes_at + start + k);
    }
  }

  void step_range(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const StreamInputs<Vec, math_t>& nz) const {
    alignas(64) float m[kQuantSpan], m_neg[kQuantSpan], v[kQuantSpan], vmax[kQuantSpan];
    // Spans as short as whole blocks allow (and whole row blocks, where the noise reads rows), so
    // that the buffers and the span's params and grads stay in L1 between the passes.
    const int64_t span_size = noise_reads_rows(kNoise) ? kQuantSpan : std::max(block_size, kShortSpan);
    for (int64_t span = begin; span < end; span += span_size) {
      const int64_t n = std::min(span_size, end - span);
      dequantize<false>(codes(t.m), t.m_scales, kSignedValues, span, n, m);
      if (kPn) dequantize<false>(static_cast<const uint8_t*>(t.m_neg), t.m_neg_scales, kSignedValues, span, n, m_neg);
      if (kSecond != kNoSecondMoment) dequantize<true>(codes(t.v), t.v_scales, kUnsignedValues, span, n, v);
      if (kSecond == kAmsgrad) dequantize<true>(codes(t.vmax), t.vmax_scales, kUnsignedValues, span, n, vmax);
      const Float kernel{static_cast<scalar_t*>(t.p) + span,
                         static_cast<const scalar_t*>(t.g) + span,
                         m,
                         m_neg,
                         v,
                         vmax,
                         t.numel,
                         t.offset + static_cast<uint64_t>(span),
                         static_cast<uint64_t>(t.scalars.t),
                         /*stores_root=*/true};
      kernel.step_range(0, n, c, nz);
      // PN's m_neg is read only: its codes and scales stay. The buffers hold sqrt_rn(v) (the
      // update's root) without amsgrad; with it, v itself and sqrt_rn(vmax).
      quantize(m, kSignedPoints, span, n, t.m_scales, codes(t.m));
      if (kSecond == kAmsgrad) sqrt_in_place(v, n);
      if (kSecond != kNoSecondMoment) quantize(v, kUnsignedPoints, span, n, t.v_scales, codes(t.v));
      if (kSecond == kAmsgrad) {
        quantize(vmax, kUnsignedValues, span, n, t.vmax_scales, codes(t.vmax));  // rounded up: never decreases
      }
    }
  }
};

// `state_t` uint8_t: 8-bit state (QuantizedKernel), through the float32-state kernel.
template <typename scalar_t, typename state_t, bool kPn, int kSecond, int kNoise>
void run_typed(const CpuStep& s) {
  static constexpr bool kCodes = std::is_same_v<state_t, uint8_t>;
  using Kernel = ChunkKernel<scalar_t, std::conditional_t<kCodes, float, state_t>, kPn, kSecond, kNoise>;
  using Vec = typename Kernel::Vec;
  using math_t = typename Kernel::math_t;
  const int64_t n = s.num_tensors;
  std::vector<ElementCoefs<Vec>> coefs;
  coefs.reserve(n);
  std::vector<int64_t> first_chunk(n + 1, 0);  // tensor i owns chunks [first_chunk[i], first_chunk[i+1])
  for (int64_t i = 0; i < n; ++i) {
    coefs.push_back(make_coefs<Vec, math_t>(s.hyper, s.tensors[i].scalars, s.has_grad_scale,
                                            static_cast<math_t>(s.grad_scale)));
    first_chunk[i + 1] = first_chunk[i] + (s.tensors[i].numel + kCpuChunk - 1) / kCpuChunk;
  }
  // The weight vector is read once per call, in the math type (the reference converts it too).
  std::vector<math_t> weights(kNoise == kMultiplicativeNoise ? s.noise.batch : 0);
  for (size_t b = 0; b < weights.size(); ++b) weights[b] = static_cast<math_t>(s.weights[b]);
  const StreamInputs<Vec, math_t> nz{make_noise_coefs<Vec, math_t>(s.noise), weights.data(), s.noise.seed,
                                     s.noise.batch, s.noise.centered, s.noise.stochastic_rounding,
                                     s.noise.stochastic_state_rounding};
  at::parallel_for(0, first_chunk[n], 1, [&](int64_t begin, int64_t end) {
    int64_t i = std::upper_bound(first_chunk.begin(), first_chunk.end(), begin) - first_chunk.begin() - 1;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      while (chunk >= first_chunk[i + 1]) ++i;  // skips empty tensors, which own no chunk
      const CpuTensor& t = s.tensors[i];
      const int64_t start = (chunk - first_chunk[i]) * kCpuChunk;
      const int64_t end = std::min(start + kCpuChunk, t.numel);
      if constexpr (kCodes) {
        const QuantizedKernel<scalar_t, kPn, kSecond, kNoise> kernel{t, s.block_size, s.code_books, s.code_rows};
        kernel.step_range(start, end, coefs[i], nz);
      } else {
        const Kernel kernel{static_cast<scalar_t*>(t.p),
                            static_cast<const scalar_t*>(t.g),
                            static_cast<state_t*>(t.m),
                            static_cast<const state_t*>(t.m_neg),
                            static_cast<state_t*>(t.v),
                            static_cast<state_t*>(t.vmax),
                            t.numel,
                            t.offset,
                            static_cast<uint64_t>(t.scalars.t)};
        kernel.step_range(start, end, coefs[i], nz);
      }
    }
  });
}

template <typename scalar_t, typename state_t>
void run_family(const CpuStep& s) {
  using None = std::integral_constant<int, kNoNoise>;
  using Iso = std::integral_constant<int, kIsotropicNoise>;
  using Fisher = std::integral_constant<int, kDiagFisherNoise>;
  using Mult = std::integral_constant<int, kMultiplicativeNoise>;
  dispatch_family(s.pn, s.second_moment != kNoSecondMoment, s.second_moment == kAmsgrad, [&](auto pn, auto second) {
    auto run = [&](auto noise) {
      run_typed<scalar_t, state_t, decltype(pn)::value, decltype(second)::value, decltype(noise)::value>(s);
    };
    switch (s.noise.kind) {
      case kIsotropicNoise: return run(Iso{});
      case kDiagFisherNoise: return run(Fisher{});
      case kMultiplicativeNoise: return run(Mult{});
      default: return run(None{});
    }
  });
}

// float16/bfloat16 params: state of their own type, float32, or (bfloat16) 8-bit codes (validated before).
template <typename scalar_t>
void run_reduced(const CpuStep& s) {
  if (s.state_dtype == CpuDtype::kFloat) run_family<scalar_t, float>(s);
  else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (s.state_dtype == CpuDtype::kCodes8) run_family<scalar_t, uint8_t>(s);
    else run_family<scalar_t, scalar_t>(s);
  } else {
    run_family<scalar_t, scalar_t>(s);
  }
}

}  // namespace

void run_cpu_step(const CpuStep& s) {
  switch (s.dtype) {
    case CpuDtype::kFloat:
      if (s.state_dtype == CpuDtype::kBFloat16) return run_family<float, c10::BFloat16>(s);
      if (s.state_dtype == CpuDtype::kCodes8) return run_family<float, uint8_t>(s);
      return run_family<float, float>(s);
    case CpuDtype::kDouble: return run_family<double, double>(s);
    case CpuDtype::kHalf: return run_reduced<c10::Half>(s);
    case CpuDtype::kBFloat16: return run_reduced<c10::BFloat16>(s);
    case CpuDtype::kCodes8: return;  // a state type, never the params' (validated before)
  }
}

}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
