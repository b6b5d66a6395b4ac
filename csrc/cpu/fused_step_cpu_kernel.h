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
// Gradient noise (docs/kernel-contract.md, "Noise") is formed per vector in registers: the
// grad_sample rows of the vector's elements are loaded one row at a time and summed (the rows of
// one element lie numel apart), normals come from a 64-element block buffer filled for the block's
// global indices (cpu_normals.h), and the result goes straight into the update. The noise kind is a template
// parameter: it decides what is read (grad or B rows) and whether Philox runs at all.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "cpu_normals.h"
#include "cpu_step.h"
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

// What the noise reads besides each tensor's own operands: the per-call values in the math type.
template <typename Vec, typename math_t>
struct NoiseInputs {
  NoiseCoefs<Vec> coefs;
  const math_t* weights;  // multiplicative: the B weights, converted once per call
  uint64_t seed;
  int32_t batch;
  bool centered;
};

template <typename scalar_t, bool kPn, int kSecond, int kNoise>
struct ChunkKernel {
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  using math_t = typename Vec::value_type;
  static constexpr int kParts = IO::kParts;

  scalar_t* p;
  const scalar_t* g;  // grad, or grad_sample row 0 when kNoise reads rows
  scalar_t* m;
  const scalar_t* m_neg;
  scalar_t* v;
  scalar_t* vmax;
  int64_t numel;    // distance between two rows of grad_sample
  uint64_t offset;  // global index of element 0
  uint64_t step;    // the tensor's step after this update's increment

  // Noise kinds that draw normals get them a block of kNormalBlock elements at a time (Philox and
  // Box-Muller over whole vectors of lanes, cpu_normals.h), into a stack buffer that the block's
  // vectors then read: 64 elements, a multiple of every IO::kWidth and of 32K (chunks stay whole).
  static constexpr bool kDrawsNormals = kNoise == kIsotropicNoise || kNoise == kDiagFisherNoise;
  static constexpr int kNormalBlock = 64;
  static_assert(kNormalBlock % IO::kWidth == 0 && kCpuChunk % kNormalBlock == 0, "blocks of whole vectors");
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

  // SPEC section 0 steps 1-3 for elements [i, i + count): the gradient the update uses.
  void form_grad(int64_t i, int64_t count, const ElementCoefs<Vec>& c, const NoiseInputs<Vec, math_t>& nz,
                 const float* lanes, Vec* out) const {
    if constexpr (!noise_reads_rows(kNoise)) {
      load_row(0, i, count, c, out);
      if constexpr (kNoise == kIsotropicNoise) {
        Vec xi[kParts];
        normals(lanes, xi);
        for (int k = 0; k < kParts; ++k) out[k] = isotropic_grad(out[k], nz.coefs, xi[k]);
      }
    } else {
      RowSums<Vec> sums[kParts];
      for (int k = 0; k < kParts; ++k) sums[k] = RowSums<Vec>{Vec(math_t(0)), Vec(math_t(0))};
      for (int64_t b = 0; b < nz.batch; ++b) {
        Vec r[kParts];
        load_row(b, i, count, c, r);
        for (int k = 0; k < kParts; ++k) {
          if constexpr (kNoise == kMultiplicativeNoise) add_weighted_row(sums[k], Vec(nz.weights[b]), r[k]);
          else add_fisher_row(sums[k], r[k], nz.centered);
        }
      }
      for (int k = 0; k < kParts; ++k) out[k] = row_mean(sums[k], nz.coefs);
      if constexpr (kNoise == kDiagFisherNoise) {
        if (nz.centered) {
          for (int64_t b = 0; b < nz.batch; ++b) {
            Vec r[kParts];
            load_row(b, i, count, c, r);
            for (int k = 0; k < kParts; ++k) add_deviation(sums[k], r[k], out[k]);
          }
        }
        Vec xi[kParts];
        normals(lanes, xi);
        for (int k = 0; k < kParts; ++k) out[k] = fisher_grad<VecOps>(out[k], sums[k], nz.coefs, xi[k]);
      }
    }
  }

  // Elements [i, i + count), count <= IO::kWidth.
  // `lanes`: the vector's normals when the kind draws them (else unused).
  void step_vector(int64_t i, int64_t count, const ElementCoefs<Vec>& c, const NoiseInputs<Vec, math_t>& nz,
                   const float* lanes) const {
    Vec rp[kParts], rg[kParts], rm[kParts], rmn[kParts], rv[kParts], rvm[kParts];
    form_grad(i, count, c, nz, lanes, rg);
    IO::load(p + i, count, rp);
    IO::load(m + i, count, rm);
    if (kPn) IO::load(m_neg + i, count, rmn);
    if (kSecond != kNoSecondMoment) IO::load(v + i, count, rv);
    if (kSecond == kAmsgrad) IO::load(vmax + i, count, rvm);
    for (int k = 0; k < kParts; ++k) {
      update_element<kPn, kSecond, VecOps>(c, rp[k], rg[k], rm[k], rmn[k], rv[k], rvm[k]);
    }
    IO::store(p + i, count, rp);
    IO::store(m + i, count, rm);
    if (kSecond != kNoSecondMoment) IO::store(v + i, count, rv);
    if (kSecond == kAmsgrad) IO::store(vmax + i, count, rvm);
  }

  void step_range(int64_t begin, int64_t end, const ElementCoefs<Vec>& c, const NoiseInputs<Vec, math_t>& nz) const {
    if constexpr (kDrawsNormals) {
      // A partial last block draws a few normals it does not use (their lanes lie past the tensor).
      alignas(64) float lanes[kNormalBlock];
      for (int64_t block = begin; block < end; block += kNormalBlock) {
        const int64_t block_end = std::min<int64_t>(block + kNormalBlock, end);
        fill_normals<kNormalBlock>(nz.seed, step, kTag, offset + static_cast<uint64_t>(block), lanes);
        const int64_t full_end = block + (block_end - block) / IO::kWidth * IO::kWidth;
        for (int64_t i = block; i < full_end; i += IO::kWidth) step_vector(i, IO::kWidth, c, nz, lanes + (i - block));
        if (full_end < block_end) step_vector(full_end, block_end - full_end, c, nz, lanes + (full_end - block));
      }
    } else {
      const int64_t full_end = begin + (end - begin) / IO::kWidth * IO::kWidth;
      for (int64_t i = begin; i < full_end; i += IO::kWidth) step_vector(i, IO::kWidth, c, nz, nullptr);
      if (full_end < end) step_vector(full_end, end - full_end, c, nz, nullptr);
    }
  }
};

template <typename scalar_t, bool kPn, int kSecond, int kNoise>
void run_typed(const CpuStep& s) {
  using Kernel = ChunkKernel<scalar_t, kPn, kSecond, kNoise>;
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
  const NoiseInputs<Vec, math_t> nz{make_noise_coefs<Vec, math_t>(s.noise), weights.data(), s.noise.seed,
                                    s.noise.batch, s.noise.centered};
  at::parallel_for(0, first_chunk[n], 1, [&](int64_t begin, int64_t end) {
    int64_t i = std::upper_bound(first_chunk.begin(), first_chunk.end(), begin) - first_chunk.begin() - 1;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      while (chunk >= first_chunk[i + 1]) ++i;  // skips empty tensors, which own no chunk
      const CpuTensor& t = s.tensors[i];
      const Kernel kernel{static_cast<scalar_t*>(t.p),
                          static_cast<const scalar_t*>(t.g),
                          static_cast<scalar_t*>(t.m),
                          static_cast<const scalar_t*>(t.m_neg),
                          static_cast<scalar_t*>(t.v),
                          static_cast<scalar_t*>(t.vmax),
                          t.numel,
                          t.offset,
                          static_cast<uint64_t>(t.scalars.t)};
      const int64_t start = (chunk - first_chunk[i]) * kCpuChunk;
      kernel.step_range(start, std::min(start + kCpuChunk, t.numel), coefs[i], nz);
    }
  });
}

template <typename scalar_t>
void run_family(const CpuStep& s) {
  using None = std::integral_constant<int, kNoNoise>;
  using Iso = std::integral_constant<int, kIsotropicNoise>;
  using Fisher = std::integral_constant<int, kDiagFisherNoise>;
  using Mult = std::integral_constant<int, kMultiplicativeNoise>;
  dispatch_family(s.pn, s.second_moment != kNoSecondMoment, s.second_moment == kAmsgrad, [&](auto pn, auto second) {
    auto run = [&](auto noise) {
      run_typed<scalar_t, decltype(pn)::value, decltype(second)::value, decltype(noise)::value>(s);
    };
    switch (s.noise.kind) {
      case kIsotropicNoise: return run(Iso{});
      case kDiagFisherNoise: return run(Fisher{});
      case kMultiplicativeNoise: return run(Mult{});
      default: return run(None{});
    }
  });
}

}  // namespace

void run_cpu_step(const CpuStep& s) {
  switch (s.dtype) {
    case CpuDtype::kFloat: return run_family<float>(s);
    case CpuDtype::kDouble: return run_family<double>(s);
    case CpuDtype::kHalf: return run_family<c10::Half>(s);
    case CpuDtype::kBFloat16: return run_family<c10::BFloat16>(s);
  }
}

}  // namespace NF_CPU_KERNEL_NS
}  // namespace noisefuse
