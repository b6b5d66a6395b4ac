// The op noisefuse::fused_step_ on the CUDA kernels: validate the call (shared with the CPU kernel),
// lay out the rows and weights of the noise, and run the variant of the params' and state's types
// and of the stores rounded stochastically (fused_step_launch.h); the kernels are in
// fused_step_kernels.cuh (8-bit state: fused_step_blockwise.cuh), and docs/backends/native.md
// describes them. The CUDA build registers it (fused_step_cuda.cu), and so does the CUDA emulation
// (csrc/emulation), where the same code launches the same kernels on CPU tensors.
#pragma once

#include <optional>
#include <vector>

#include "fused_step_launch.h"
#include "kernel_launch.cuh"
#include "noisefuse/fused_step_inputs.h"

namespace noisefuse {
namespace cuda {

// float16/bfloat16 params: state of their own type or float32 (validated before).
template <typename scalar_t, int kRound>
inline void launch_reduced(bool float_state, const std::vector<at::TensorList>& lists, const FusedStepLists& l,
                           const StepHyper& h, const LaunchNoise& noise, const DeviceScalars& scalars) {
  if (float_state) launch_typed<scalar_t, float, kRound>(lists, l, h, noise, scalars);
  else launch_typed<scalar_t, scalar_t, kRound>(lists, l, h, noise, scalars);
}

inline void fused_step_device(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                              at::TensorList neg_exp_avgs, at::TensorList exp_avg_sqs,
                              at::TensorList max_exp_avg_sqs, at::TensorList steps, at::TensorList beta1_prods,
                              at::TensorList grad_samples, int64_t momentum, double lr, double beta1, double beta2,
                              double beta0, double eps, double weight_decay, bool decoupled, bool nesterov,
                              bool maximize, int64_t demon_total_steps, double demon_delay,
                              const std::optional<at::Tensor>& grad_scale,
                              const std::optional<at::Tensor>& found_inf,
                              const std::optional<at::Tensor>& lr_tensor,
                              const std::optional<at::Tensor>& sample_weights, at::IntArrayRef offsets,
                              int64_t noise_kind, int64_t seed, double noise_std, double noise_scale,
                              bool noise_centered, bool stochastic_rounding, bool stochastic_state_rounding,
                              const std::optional<at::TensorList> state_scales,
                              const std::optional<at::Tensor>& code_books,
                              int64_t block_size) {
  const FusedStepLists l{params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods};
  const NoiseArgs noise{grad_samples,   sample_weights,      offsets,   noise_kind, seed, noise_std, noise_scale,
                        noise_centered, stochastic_rounding, stochastic_state_rounding};
  const BlockwiseArgs blockwise{state_scales.value_or(at::TensorList()), code_books, block_size};
  NoiseHyper nh;
  const StepHyper h = check_fused_step_inputs(l, momentum, lr, beta1, beta2, beta0, eps, weight_decay, decoupled,
                                              nesterov, maximize, demon_total_steps, demon_delay,
                                              ScalarTensors{grad_scale, found_inf, lr_tensor}, noise,
                                              blockwise, kDeviceType, &nh);
  if (params.empty()) return;
  const DeviceGuard device_guard(params[0].device());
  const auto device_ptr = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? t->const_data_ptr<float>() : nullptr;
  };
  const DeviceScalars scalars{device_ptr(grad_scale), device_ptr(found_inf), device_ptr(lr_tensor)};
  // Copies (rows in another layout than their param, strided weights) are stream-ordered before
  // the launches and freed to the caching allocator only after them.
  const std::vector<at::Tensor> grad_sources = grad_sources_like_params(l, noise);
  const at::Tensor weights = nh.kind == kMultiplicativeNoise ? sample_weights->contiguous() : at::Tensor();
  const LaunchNoise launch{nh, noise.uses_offsets() ? offsets : at::IntArrayRef(),
                           weights.defined() ? weights.const_data_ptr<float>() : nullptr};
  const std::vector<at::TensorList> lists = l.elementwise(grad_sources.empty() ? grads : at::TensorList(grad_sources));
  if (blockwise.enabled()) {  // float32 or bfloat16 params (validated)
    if (params[0].scalar_type() == at::kFloat) {
      return launch_blockwise<float, kRoundNone>(lists, l, blockwise, h, launch, scalars);
    }
    if (nh.stochastic_rounding) {
      return launch_blockwise<at::BFloat16, kRoundParams>(lists, l, blockwise, h, launch, scalars);
    }
    return launch_blockwise<at::BFloat16, kRoundNone>(lists, l, blockwise, h, launch, scalars);
  }
  const at::ScalarType state = exp_avgs[0].scalar_type();
  const bool float_state = state == at::kFloat;
  switch (params[0].scalar_type()) {
    case at::kFloat:
      if (state != at::kBFloat16) return launch_typed<float, float, kRoundNone>(lists, l, h, launch, scalars);
      if (nh.stochastic_state_rounding) {
        return launch_typed<float, at::BFloat16, kRoundState>(lists, l, h, launch, scalars);
      }
      return launch_typed<float, at::BFloat16, kRoundNone>(lists, l, h, launch, scalars);
    case at::kDouble: return launch_typed<double, double, kRoundNone>(lists, l, h, launch, scalars);
    case at::kHalf: return launch_reduced<at::Half, kRoundNone>(float_state, lists, l, h, launch, scalars);
    case at::kBFloat16:
      if (nh.stochastic_state_rounding) {  // bfloat16 state (validated)
        if (nh.stochastic_rounding) {
          return launch_typed<at::BFloat16, at::BFloat16, kRoundParams | kRoundState>(lists, l, h, launch, scalars);
        }
        return launch_typed<at::BFloat16, at::BFloat16, kRoundState>(lists, l, h, launch, scalars);
      }
      if (nh.stochastic_rounding) {
        return launch_reduced<at::BFloat16, kRoundParams>(float_state, lists, l, h, launch, scalars);
      }
      return launch_reduced<at::BFloat16, kRoundNone>(float_state, lists, l, h, launch, scalars);
    default: TORCH_CHECK(false, "noisefuse.fused_step_: unsupported dtype ", params[0].scalar_type());
  }
}

}  // namespace cuda
}  // namespace noisefuse
