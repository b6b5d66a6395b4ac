// Per-tensor scalars of one fused step, computed in double from the tensor's counters exactly as
// noisefuse/backends/family.py::tensor_scalars does (docs/kernel-contract.md, "Per-tensor scalars").
// One header for the CPU kernel, the CUDA update kernel and the CUDA counter kernel, so the three
// can never disagree on the step, the Demon beta or the running beta product.
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

#include "noisefuse/isa.h"

namespace noisefuse {

// Codes of the op's `momentum` argument (noisefuse.backends.family.MOMENTUM_CODES).
enum MomentumKind : int { kHeavyBall = 0, kEma = 1, kPn = 2 };

// The runtime values shared by every tensor of one call. Plain data: kernels take it by value.
struct StepHyper {
  double lr;
  double beta1;
  double beta2;
  double beta0;
  double eps;
  double weight_decay;
  double demon_delay;
  int64_t demon_total_steps;  // 0: no Demon decay
  int32_t momentum;           // MomentumKind
  bool decoupled;
  bool nesterov;
  bool maximize;
  bool second_moment;
  bool track_beta1_prod;  // second moment with Demon: bc1 comes from beta1_prods
};

// Coefficients of one tensor's update at step t (names as in docs/kernel-contract.md).
struct TensorScalars {
  int64_t t;
  double beta1_t;
  double a;
  double b;
  double c_pos;
  double c_neg;
  double step_size;     // lr / bc1 with a second moment, lr otherwise
  double inv_sqrt_bc2;  // 1 with no second moment
  double new_beta1_prod;
  bool odd;  // PN: exp_avgs is the positive buffer at odd steps
};

inline namespace NF_ISA_NS {

// Demon's decayed beta1 for the 1-based step t (SPEC section 3).
C10_HOST_DEVICE inline double demon_beta(double beta_init, int64_t t, int64_t total_steps, double delay) {
  if (total_steps <= 0) {
    return beta_init;
  }
  const double s = static_cast<double>(t - 1);
  const double T = static_cast<double>(total_steps);
  const double start = delay * T;
  if (s < start) {
    return beta_init;
  }
  double frac = 1.0 - (s - start) / (T - start);
  frac = frac > 0.0 ? frac : 0.0;
  return beta_init * frac / ((1.0 - beta_init) + beta_init * frac);
}

// The step number this update runs: the stored counter plus one. Counters are float64 0-d tensors,
// exact for every step count and Demon product a run can reach (float32 stalls at 2^24 steps and
// rounds the product: docs/kernel-contract.md, "Per-tensor scalars").
C10_HOST_DEVICE inline int64_t next_step(double stored_step) {
  return static_cast<int64_t>(stored_step) + 1;
}

// The running product of Demon betas after step t, given the product stored before it.
C10_HOST_DEVICE inline double next_beta1_prod(const StepHyper& h, int64_t t, double stored_prod) {
  return stored_prod * demon_beta(h.beta1, t, h.demon_total_steps, h.demon_delay);
}

// Scalars for a tensor whose counters read `stored_step` (and `stored_prod`, used only when
// h.track_beta1_prod) before this update.
C10_HOST_DEVICE inline TensorScalars tensor_scalars(const StepHyper& h, double stored_step, double stored_prod) {
  TensorScalars sc;
  sc.t = next_step(stored_step);
  sc.beta1_t = demon_beta(h.beta1, sc.t, h.demon_total_steps, h.demon_delay);
  if (h.momentum == kPn) {
    sc.a = sc.beta1_t * sc.beta1_t;
    sc.b = 1.0 - sc.a;
  } else if (h.momentum == kHeavyBall) {
    sc.a = sc.beta1_t;
    sc.b = 1.0;
  } else {
    sc.a = sc.beta1_t;
    sc.b = 1.0 - sc.beta1_t;
  }
  const double one_plus = 1.0 + h.beta0;
  const double norm = std::sqrt(one_plus * one_plus + h.beta0 * h.beta0);
  sc.c_pos = one_plus / norm;
  sc.c_neg = h.beta0 / norm;
  sc.odd = (sc.t % 2) == 1;
  sc.step_size = h.lr;
  sc.inv_sqrt_bc2 = 1.0;
  sc.new_beta1_prod = stored_prod;
  if (h.second_moment) {
    const double td = static_cast<double>(sc.t);
    double bc1;
    if (h.track_beta1_prod) {
      sc.new_beta1_prod = stored_prod * sc.beta1_t;
      bc1 = 1.0 - sc.new_beta1_prod;
    } else {
      bc1 = 1.0 - std::pow(h.beta1, td);
    }
    sc.step_size = h.lr / bc1;
    sc.inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(h.beta2, td));
  }
  return sc;
}

}  // namespace NF_ISA_NS
}  // namespace noisefuse
