// CPU kernel of noisefuse::fused_step_: validates the call (noise, rounding and 8-bit state
// included), reads the host-side counters, computes each tensor's scalars (step_scalars.h), runs
// the element-wise kernel (fused_step_cpu_kernel.h) in its AVX2 build when the CPU supports it and
// its baseline build otherwise, then advances the counters once every element is written.
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_step.h"
#include "noisefuse/fused_step_inputs.h"

#define NF_CPU_KERNEL_NS cpu_default
#include "fused_step_cpu_kernel.h"
#include "blockwise_check_kernel.h"

namespace noisefuse {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

// Whether to run the AVX2 build: compiled in, supported by this CPU, and not overridden by
// NOISEFUSE_CPU_KERNEL=baseline (read per call, so tests can check the baseline build too).
bool use_avx2() {
  const char* choice = std::getenv("NOISEFUSE_CPU_KERNEL");
  if (choice != nullptr && std::string(choice) == "baseline") return false;
  return cpu_avx2::kCompiled && cpu_has_avx2();
}

CpuDtype cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CpuDtype::kFloat;
    case at::kDouble: return CpuDtype::kDouble;
    case at::kHalf: return CpuDtype::kHalf;
    case at::kBFloat16: return CpuDtype::kBFloat16;
    default: TORCH_CHECK(false, "noisefuse.fused_step_: unsupported dtype ", t);  // validated before
  }
}

void fused_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList neg_exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                    at::TensorList steps, at::TensorList beta1_prods, at::TensorList grad_samples, int64_t momentum,
                    double lr, double beta1, double beta2, double beta0, double eps, double weight_decay,
                    bool decoupled, bool nesterov, bool maximize, int64_t demon_total_steps, double demon_delay,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& sample_weights, at::IntArrayRef offsets, int64_t noise_kind,
                    int64_t seed, double noise_std, double noise_scale, bool noise_centered,
                    bool stochastic_rounding, bool stochastic_state_rounding,
                    const std::optional<at::TensorList> state_scales,
                    const std::optional<at::Tensor>& code_books, int64_t block_size) {
  const FusedStepLists l{params, grads, exp_avgs, neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, beta1_prods};
  const NoiseArgs noise{grad_samples,   sample_weights,      offsets,   noise_kind, seed, noise_std, noise_scale,
                        noise_centered, stochastic_rounding, stochastic_state_rounding};
  const BlockwiseArgs blockwise{state_scales.value_or(at::TensorList()), code_books, block_size};
  NoiseHyper nh;
  StepHyper h = check_fused_step_inputs(l, momentum, lr, beta1, beta2, beta0, eps, weight_decay, decoupled, nesterov,
                                        maximize, demon_total_steps, demon_delay,
                                        ScalarTensors{grad_scale, found_inf, lr_tensor}, noise, blockwise,
                                        c10::DeviceType::CPU, &nh);
  if (params.empty()) return;
  // Host memory: reading the AMP scalars and the counters costs no synchronisation.
  if (found_inf.has_value() && *found_inf->const_data_ptr<float>() != 0.f) return;
  if (lr_tensor.has_value()) h.lr = *lr_tensor->const_data_ptr<float>();
  const std::vector<at::Tensor> grad_sources = grad_sources_like_params(l, noise);
  const at::Tensor weights =
      nh.kind == kMultiplicativeNoise ? sample_weights->contiguous() : at::Tensor();

  const size_t n = params.size();
  // 8-bit state: the scales of state list `list` (0: exp_avgs, then those used) of tensor i.
  const auto scales = [&](size_t list, size_t i) {
    return blockwise.enabled() ? blockwise.scales_of(list, i, n).data_ptr<float>() : nullptr;
  };
  const size_t v_list = 1 + l.pn();  // exp_avg_sqs' place among the state lists
  std::vector<CpuTensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const double prod = h.track_beta1_prod ? *beta1_prods[i].const_data_ptr<double>() : 1.0;
    const TensorScalars sc = tensor_scalars(h, *steps[i].const_data_ptr<double>(), prod);
    const bool pos_is_first = !l.pn() || sc.odd;  // PN: exp_avgs is "pos" at odd steps
    tensors[i] = CpuTensor{params[i].data_ptr(),
                           grad_sources.empty() ? grads[i].const_data_ptr() : grad_sources[i].const_data_ptr(),
                           (pos_is_first ? exp_avgs : neg_exp_avgs)[i].data_ptr(),
                           l.pn() ? (pos_is_first ? neg_exp_avgs : exp_avgs)[i].const_data_ptr() : nullptr,
                           l.second_moment() ? exp_avg_sqs[i].data_ptr() : nullptr,
                           l.amsgrad() ? max_exp_avg_sqs[i].data_ptr() : nullptr,
                           params[i].numel(),
                           noise.uses_offsets() ? static_cast<uint64_t>(offsets[i]) : 0,
                           sc,
                           scales(pos_is_first ? 0 : 1, i),
                           l.pn() ? scales(pos_is_first ? 1 : 0, i) : nullptr,
                           l.second_moment() ? scales(v_list, i) : nullptr,
                           l.amsgrad() ? scales(v_list + 1, i) : nullptr};
  }
  const CpuStep step{tensors.data(),
                     static_cast<int64_t>(tensors.size()),
                     h,
                     grad_scale.has_value(),
                     grad_scale.has_value() ? *grad_scale->const_data_ptr<float>() : 1.f,
                     cpu_dtype(params[0].scalar_type()),
                     blockwise.enabled() ? CpuDtype::kCodes8 : cpu_dtype(exp_avgs[0].scalar_type()),
                     l.pn(),
                     l.amsgrad() ? kAmsgrad : (l.second_moment() ? kSecondMoment : kNoSecondMoment),
                     nh,
                     weights.defined() ? weights.const_data_ptr<float>() : nullptr,
                     blockwise.block_size,
                     blockwise.enabled() ? code_books->const_data_ptr<float>() : nullptr,
                     blockwise.enabled() ? code_rows(code_books->const_data_ptr<float>()) : nullptr};
  if (use_avx2()) {
    cpu_avx2::run_cpu_step(step);
  } else {
    cpu_default::run_cpu_step(step);
  }
  // Counters advance only after every element of the step is written.
  for (size_t i = 0; i < n; ++i) {
    *steps[i].data_ptr<double>() = static_cast<double>(tensors[i].scalars.t);
    if (h.track_beta1_prod) *beta1_prods[i].data_ptr<double>() = tensors[i].scalars.new_beta1_prod;
  }
}

}  // namespace
}  // namespace noisefuse

TORCH_LIBRARY_IMPL(noisefuse, CPU, m) {
  m.impl("fused_step_", &noisefuse::fused_step_cpu);
}
