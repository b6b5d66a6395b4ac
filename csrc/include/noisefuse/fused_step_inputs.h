// The arguments of noisefuse::fused_step_ as the kernels see them, and the checks every kernel runs
// before it writes anything (docs/kernel-contract.md, "Arguments").
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "noisefuse/noise_element.h"
#include "noisefuse/step_scalars.h"

namespace noisefuse {

// The op's tensor lists; optional lists are empty when unused.
struct FusedStepLists {
  at::TensorList params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods;

  bool pn() const { return !neg_exp_avgs.empty(); }
  bool second_moment() const { return !exp_avg_sqs.empty(); }
  bool amsgrad() const { return !max_exp_avg_sqs.empty(); }
  // How many state lists the call updates (exp_avgs and those used of the three others).
  size_t state_lists() const { return 1 + pn() + second_moment() + amsgrad(); }

  // The element-wise lists in the kernels' pointer order: params, `grad_source` (grads, or the
  // grad_sample rows when the noise reads them), exp_avgs, then neg_exp_avgs / exp_avg_sqs /
  // max_exp_avg_sqs where used.
  std::vector<at::TensorList> elementwise(at::TensorList grad_source) const;
};

// The op's optional one-element float32 tensors, read by the kernels on the params' device so that no
// host value changes between the steps of a captured CUDA graph: the AMP scale and overflow flag,
// and the learning rate, which replaces the `lr` float when given (an LR schedule writes it in place).
struct ScalarTensors {
  const std::optional<at::Tensor>& grad_scale;
  const std::optional<at::Tensor>& found_inf;
  const std::optional<at::Tensor>& lr;
};

// The op's random-stream arguments (docs/kernel-contract.md, "Native op schema"): the noise, and
// stochastic rounding of the params and of the state, which draw from the same stream at the same
// global offsets.
struct NoiseArgs {
  at::TensorList grad_samples;
  const std::optional<at::Tensor>& sample_weights;
  at::IntArrayRef offsets;
  int64_t kind;
  int64_t seed;
  double std;
  double scale;
  bool centered;
  bool stochastic_rounding;
  bool stochastic_state_rounding;

  // Whether the kernels index draws by global element offset (and so need `offsets`).
  bool uses_offsets() const { return kind != 0 || stochastic_rounding || stochastic_state_rounding; }
};

// The op's 8-bit blockwise state arguments (docs/kernel-contract.md, "8-bit blockwise state"): with
// block_size > 0 the state lists hold uint8 codes and `scales` one float32 scale per block of each,
// list by list in the kernels' pointer order (every tensor's exp_avgs scales, then neg_exp_avgs,
// exp_avg_sqs, max_exp_avg_sqs where used); `code_books` is the float32 [4, 256] table.
struct BlockwiseArgs {
  at::TensorList scales;
  const std::optional<at::Tensor>& code_books;
  int64_t block_size;

  bool enabled() const { return block_size > 0; }
  // Scales of state list `list` (0: exp_avgs, in the order above) of tensor `i` among `n`.
  const at::Tensor& scales_of(size_t list, size_t i, size_t n) const { return scales[list * n + i]; }
};

// Validates every list, tensor and scalar (noise, rounding and 8-bit state included) and returns the call's StepHyper and
// NoiseHyper; throws (naming the list and index) on the first problem. `device_type` is the
// kernel's: all tensors must be on one device of that type.
StepHyper check_fused_step_inputs(const FusedStepLists& lists, int64_t momentum, double lr, double beta1,
                                  double beta2, double beta0, double eps, double weight_decay, bool decoupled,
                                  bool nesterov, bool maximize, int64_t demon_total_steps, double demon_delay,
                                  const ScalarTensors& scalars, const NoiseArgs& noise,
                                  const BlockwiseArgs& blockwise, c10::DeviceType device_type,
                                  NoiseHyper* noise_out);

// The tensors the kernels read the gradient from, laid out like their params: the grad_sample rows
// when the noise reads them (row b of tensor i at data_ptr + b * numel), else the grads. Those
// already in that layout are returned as they are, others copied (the user's tensors are only
// read). Empty when the grads are read as given (every one laid out like its param).
std::vector<at::Tensor> grad_sources_like_params(const FusedStepLists& lists, const NoiseArgs& noise);

}  // namespace noisefuse
