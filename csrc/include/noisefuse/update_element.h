// The per-element update of the fused step (docs/kernel-contract.md, "Per-element update"), written
// once for every kernel. `V` is the math type: float or double for the CUDA kernel and the CPU tail,
// at::vec::Vectorized<float|double> for the CPU vector loop; `Ops` supplies the three operations
// whose spelling differs between them (negate, sqrt, NaN-propagating max).
#pragma once

#include <cmath>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"
#include "noisefuse/step_scalars.h"

namespace noisefuse {

// Second-moment variants, a template parameter because each adds a state tensor's memory traffic.
enum SecondMoment : int { kNoSecondMoment = 0, kSecondMoment = 1, kAmsgrad = 2 };

// One tensor's coefficients in the math type V, rounded once from the double TensorScalars the
// same way the reference's Python scalars are rounded when they meet a float32 tensor.
template <typename V>
struct ElementCoefs {
  V a, b, c_pos, c_neg, beta1_t;
  V lr, step_size, inv_sqrt_bc2, eps;
  V beta2, one_minus_beta2;
  V decay;         // 1 - lr * weight_decay (decoupled)
  V weight_decay;  // L2 coefficient (not decoupled)
  V grad_scale;
  bool has_grad_scale, maximize, decoupled, nesterov;
};

inline namespace NF_ISA_NS {

// Scalar operations for float/double math (CUDA kernels, CPU tails).
struct ScalarOps {
  template <typename T>
  C10_HOST_DEVICE static T neg(T x) {
    return -x;
  }
  template <typename T>
  C10_HOST_DEVICE static T sqrt(T x) {
    return std::sqrt(x);
  }
  // torch.maximum semantics: a NaN in either operand wins (a's when both are). One select, no
  // branch: b NaN fails both compares and is returned.
  template <typename T>
  C10_HOST_DEVICE static T max(T a, T b) {
    return (a > b || a != a) ? a : b;
  }
};

// `S` is the scalar math type (float, or double for float64 storage); V is constructible from it.
template <typename V, typename S>
C10_HOST_DEVICE inline ElementCoefs<V> make_coefs(const StepHyper& h, const TensorScalars& sc, bool has_grad_scale,
                                                  S grad_scale) {
  ElementCoefs<V> c{V(static_cast<S>(sc.a)),
                    V(static_cast<S>(sc.b)),
                    V(static_cast<S>(sc.c_pos)),
                    V(static_cast<S>(sc.c_neg)),
                    V(static_cast<S>(sc.beta1_t)),
                    V(static_cast<S>(h.lr)),
                    V(static_cast<S>(sc.step_size)),
                    V(static_cast<S>(sc.inv_sqrt_bc2)),
                    V(static_cast<S>(h.eps)),
                    V(static_cast<S>(h.beta2)),
                    V(static_cast<S>(1.0 - h.beta2)),
                    V(static_cast<S>(1.0 - h.lr * h.weight_decay)),
                    V(static_cast<S>(h.weight_decay)),
                    V(grad_scale),
                    has_grad_scale,
                    h.maximize,
                    h.decoupled,
                    h.nesterov};
  return c;
}

// SPEC section 0 steps 1-2 on one loaded gradient, or on one grad_sample row: unscale, maximize.
// Gradient noise (step 3, noise_element.h) follows; rows are each preprocessed before they are
// summed, as the reference does, so the sums see exactly the rows it sees.
template <typename Ops, typename V>
C10_HOST_DEVICE inline V preprocess_grad(V g, const ElementCoefs<V>& c) {
  if (c.has_grad_scale) g = g / c.grad_scale;
  if (c.maximize) g = Ops::neg(g);
  return g;
}

// Updates one element (or one vector of elements) in registers. `g` has been through steps 1-3 of
// SPEC section 0 (preprocess_grad, then the noise if any); L2 decay (step 4) is applied here.
// `m` is the buffer this step writes (PN's positive buffer), `m_neg` PN's other buffer (read only);
// `v`/`vmax` are used per kSecond. The operation order follows reference.py so that float32
// results agree to a few ulps. `root` receives the root the update divides by, sqrt(v) or amsgrad's
// sqrt(vmax) (untouched without a second moment): the 8-bit kernels (CPU and CUDA) store it, rather
// than take the same root a second time (the CUDA compiler keeps the two apart where the update
// branches).
template <bool kPn, int kSecond, typename Ops, typename V>
C10_HOST_DEVICE inline void update_element(const ElementCoefs<V>& c, V& p, V g, V& m, const V& m_neg, V& v,
                                           V& vmax, V& root) {
  if (!c.decoupled) g = g + c.weight_decay * p;
  if (c.decoupled) p = p * c.decay;
  m = c.a * m + c.b * g;
  V d = m;
  if (kPn) {
    d = c.c_pos * m - c.c_neg * m_neg;
  } else if (c.nesterov) {
    d = g + c.beta1_t * m;
  }
  if (kSecond != kNoSecondMoment) {
    v = c.beta2 * v + c.one_minus_beta2 * g * g;
    V vv = v;
    if (kSecond == kAmsgrad) {
      vmax = Ops::max(vmax, v);
      vv = vmax;
    }
    root = Ops::sqrt(vv);
    p = p - c.step_size * (d / (root * c.inv_sqrt_bc2 + c.eps));
  } else {
    p = p - c.lr * d;
  }
}

template <bool kPn, int kSecond, typename Ops, typename V>
C10_HOST_DEVICE inline void update_element(const ElementCoefs<V>& c, V& p, V g, V& m, const V& m_neg, V& v,
                                           V& vmax) {
  V root;
  update_element<kPn, kSecond, Ops>(c, p, g, m, m_neg, v, vmax, root);
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
