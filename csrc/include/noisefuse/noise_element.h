// Gradient noise inside the fused step (SPEC.md section 4; docs/kernel-contract.md, "Noise"): the
// call's noise values and the per-element arithmetic shared by the CPU kernel (V = at::vec
// vectors) and the CUDA kernel (V = float/double). How rows and normals are loaded or drawn is the
// kernels' business; what they are combined into is written once here, in the reference's order:
//   isotropic       g = g + std * xi
//   diag_fisher     mean = (sum_b r_b) / B;  f = (sum_b r_b^2) / B  or  (sum_b (r_b - mean)^2) / B
//                   g = mean + (scale * sqrt(f)) * xi
//   multiplicative  g = (sum_b w_b * r_b) / B
// with r_b the rows after unscaling and maximize (preprocess_grad) and xi the float32 normal of
// the element (philox::element_normal) converted to the math type.
#pragma once

#include <cstdint>
#include <type_traits>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"

namespace noisefuse {

// Codes of the op's noise_kind (noisefuse.noise.NOISE_CODES).
enum NoiseKind : int { kNoNoise = 0, kIsotropicNoise = 1, kDiagFisherNoise = 2, kMultiplicativeNoise = 3 };

// The call's values of the random stream: its noise, and whether bfloat16 params and bfloat16
// state are rounded stochastically from it (bf16_rounding.h). Plain data, taken by value by both
// kernels.
struct NoiseHyper {
  int32_t kind;                    // NoiseKind
  int32_t batch;                   // B, the rows of every grad_sample (row-reading kinds), else 0
  uint64_t seed;                   // key (lo32, hi32)
  double std;                      // isotropic
  double scale;                    // diag_fisher's s
  // The same two rounded to float32 by the host (as the device would: IEEE's conversion), which
  // float32 math reads, so that a kernel short of registers reloads them instead of converting the
  // float64 values again in its loop (it did, in the 8-bit diagonal-Fisher variants).
  float std_f32;
  float scale_f32;
  bool centered;                   // diag_fisher
  bool stochastic_rounding;        // bfloat16 params only
  bool stochastic_state_rounding;  // bfloat16 state only
};

// Whether a kind reads grad_sample rows instead of grad, and whether it draws per-element normals.
constexpr bool noise_reads_rows(int kind) { return kind == kDiagFisherNoise || kind == kMultiplicativeNoise; }
constexpr bool noise_draws_normals(int kind) { return kind == kIsotropicNoise || kind == kDiagFisherNoise; }

// The noise values in the math type V (rounded as the reference's Python floats are when they meet
// a float32 tensor).
template <typename V>
struct NoiseCoefs {
  V std, scale, batch;
};

inline namespace NF_ISA_NS {

template <typename V, typename S>
C10_HOST_DEVICE inline NoiseCoefs<V> make_noise_coefs(const NoiseHyper& n) {
  if constexpr (std::is_same_v<S, float>) return NoiseCoefs<V>{V(n.std_f32), V(n.scale_f32), V(static_cast<S>(n.batch))};
  else return NoiseCoefs<V>{V(static_cast<S>(n.std)), V(static_cast<S>(n.scale)), V(static_cast<S>(n.batch))};
}

// Running sums over the rows of one element (or vector of elements).
template <typename V>
struct RowSums {
  V total;
  V squares;
};

// Row b of diag_fisher's first pass; the plain (uncentered) Fisher sums squares in the same pass.
template <typename V>
C10_HOST_DEVICE inline void add_fisher_row(RowSums<V>& s, const V& r, bool centered) {
  s.total = s.total + r;
  if (!centered) s.squares = s.squares + r * r;
}

// Row b of the centered Fisher's second pass, once the mean is known (two passes, as written in
// the reference: a one-pass formula would round differently).
template <typename V>
C10_HOST_DEVICE inline void add_deviation(RowSums<V>& s, const V& r, const V& mean) {
  const V dev = r - mean;
  s.squares = s.squares + dev * dev;
}

template <typename V>
C10_HOST_DEVICE inline void add_weighted_row(RowSums<V>& s, const V& w, const V& r) {
  s.total = s.total + w * r;
}

// The mean of the rows (and the multiplicative noise's weighted mean): a division by B, as torch's.
template <typename V>
C10_HOST_DEVICE inline V row_mean(const RowSums<V>& s, const NoiseCoefs<V>& n) {
  return s.total / n.batch;
}

template <typename Ops, typename V>
C10_HOST_DEVICE inline V fisher_grad(const V& mean, const RowSums<V>& s, const NoiseCoefs<V>& n, const V& xi) {
  return mean + (n.scale * Ops::sqrt(s.squares / n.batch)) * xi;
}

template <typename V>
C10_HOST_DEVICE inline V isotropic_grad(const V& g, const NoiseCoefs<V>& n, const V& xi) {
  return g + n.std * xi;
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
