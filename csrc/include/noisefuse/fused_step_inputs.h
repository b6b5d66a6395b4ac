// The arguments of noisefuse::fused_step_ as the kernels see them, and the checks every kernel runs
// before it writes anything (docs/kernel-contract.md, "Arguments").
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "noisefuse/step_scalars.h"

namespace noisefuse {

// The op's tensor lists; optional lists are empty when unused.
struct FusedStepLists {
  at::TensorList params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods;

  bool pn() const { return !neg_exp_avgs.empty(); }
  bool second_moment() const { return !exp_avg_sqs.empty(); }
  bool amsgrad() const { return !max_exp_avg_sqs.empty(); }

  // The element-wise lists in the kernels' pointer order: params, grads, exp_avgs, then
  // neg_exp_avgs / exp_avg_sqs / max_exp_avg_sqs where used.
  std::vector<at::TensorList> elementwise() const;
};

// Validates every list, tensor and scalar and returns the call's StepHyper; throws (naming the list
// and index) on the first problem. `device_type` is the kernel's: all tensors must be on one device
// of that type.
StepHyper check_fused_step_inputs(const FusedStepLists& lists, int64_t momentum, double lr, double beta1,
                                  double beta2, double beta0, double eps, double weight_decay, bool decoupled,
                                  bool nesterov, bool maximize, int64_t demon_total_steps, double demon_delay,
                                  const std::optional<at::Tensor>& grad_scale,
                                  const std::optional<at::Tensor>& found_inf, c10::DeviceType device_type);

}  // namespace noisefuse
