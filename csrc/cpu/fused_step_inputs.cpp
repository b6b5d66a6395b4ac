// Input validation shared by the CPU and CUDA kernels of noisefuse::fused_step_. It lives with the
// CPU sources because those are compiled into every build; the CUDA kernel links against it.
// Everything is checked before either kernel writes a byte, so a rejected call changes nothing.
#include "noisefuse/fused_step_inputs.h"

#include <limits>
#include <string>

#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

namespace noisefuse {
namespace {

constexpr const char* kOp = "noisefuse.fused_step_: ";

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_length(at::TensorList list, const char* name, size_t expected, const char* why) {
  TORCH_CHECK(list.size() == expected, kOp, name, " has ", list.size(), " tensors but ", expected,
              " were expected (", why, ")");
}

// A one-element tensor of `dtype` on `device`: float64 for the step counters and Demon products
// (exact), float32 for the AMP scalars and lr_tensor.
void check_scalar(const at::Tensor& t, const std::string& name, const c10::Device& device, at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), kOp, name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, kOp, name, " must be ", dtype == at::kDouble ? "float64" : "float32",
              " but is ", t.scalar_type());
  TORCH_CHECK(t.numel() == 1, kOp, name, " must have exactly one element but has ", t.numel());
  TORCH_CHECK(t.device() == device, kOp, name, " is on ", t.device(), " but params are on ", device);
}

// Whether `a` and `b` (of one shape) put every element at the same offset: strides equal in every
// dimension of more than one element (a size-1 dimension's stride is never used; torch may set
// it either way, e.g. a [5, 1] param with strides (1, 5) and its state's (1, 1)).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() <= 1) return true;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// A tensor updated element-wise alongside params[i]: same device, shape and memory layout, so the
// kernels can walk all of them as flat arrays of numel elements, and dtype `dtype` (the param's,
// or the call's state dtype for the state lists). A grad may have any strided layout
// (`any_layout`): grad_sources_like_params copies it into its param's when it differs.
void check_like_param(const at::Tensor& t, const char* name, size_t i, const at::Tensor& p, at::ScalarType dtype,
                      bool any_layout = false) {
  TORCH_CHECK(t.defined(), kOp, name, "[", i, "] is undefined");
  TORCH_CHECK(t.device() == p.device(), kOp, name, "[", i, "] is on ", t.device(), " but params[", i, "] is on ",
              p.device());
  TORCH_CHECK(t.scalar_type() == dtype, kOp, name, "[", i, "] has dtype ", t.scalar_type(), " but ",
              dtype == p.scalar_type() ? "params[" + std::to_string(i) + "] has " : std::string("the state has "),
              dtype);
  TORCH_CHECK(t.sizes() == p.sizes(), kOp, name, "[", i, "] has shape ", t.sizes(), " but params[", i, "] has ",
              p.sizes());
  TORCH_CHECK(t.layout() == at::kStrided, kOp, name, "[", i, "] must be a dense (strided) tensor");
  if (any_layout) return;
  TORCH_CHECK(t.is_non_overlapping_and_dense(), kOp, name, "[", i,
              "] is not dense (a view with gaps or overlaps); pass a contiguous tensor");
  TORCH_CHECK(same_layout(t, p), kOp, name, "[", i, "] has strides ", t.strides(), " but params[", i, "] has ",
              p.strides(), "; the kernels need one memory layout per index");
}

// A grad_sample: [B, *param.shape], the param's dtype and device, strided; any memory layout
// (grad_sources_like_params copies it into the param's layout when it differs).
void check_rows(const at::Tensor& rows, size_t i, const at::Tensor& p, int64_t batch) {
  TORCH_CHECK(rows.defined(), kOp, "grad_samples[", i, "] is undefined");
  TORCH_CHECK(rows.device() == p.device(), kOp, "grad_samples[", i, "] is on ", rows.device(), " but params[", i,
              "] is on ", p.device());
  TORCH_CHECK(rows.scalar_type() == p.scalar_type(), kOp, "grad_samples[", i, "] has dtype ", rows.scalar_type(),
              " but params[", i, "] has ", p.scalar_type());
  TORCH_CHECK(rows.layout() == at::kStrided, kOp, "grad_samples[", i, "] must be a strided tensor");
  TORCH_CHECK(rows.dim() == p.dim() + 1 && rows.size(0) == batch && rows.sizes().slice(1) == p.sizes(), kOp,
              "grad_samples[", i, "] has shape ", rows.sizes(), " but [B, *params[", i, "].shape] = [", batch, ", ",
              p.sizes(), "] was expected (one batch size B for every param)");
}

// Per-element draws (normals, rounding bits) are indexed by an element's row-major position; the
// kernels walk memory order, the same order only for a row-major contiguous param.
void check_row_major(const at::Tensor& p, size_t i, const char* what) {
  TORCH_CHECK(p.is_contiguous(), kOp, what, " draws per element at its row-major index, ",
              "but params[", i, "] has strides ", p.strides(), " (not row-major contiguous, e.g. channels_last or ",
              "transposed); pass contiguous params (the native backend steps such groups with foreach)");
}

void check_noise(const FusedStepLists& l, const NoiseArgs& a, NoiseHyper* out) {
  *out = NoiseHyper{static_cast<int32_t>(a.kind),
                    0,
                    static_cast<uint64_t>(a.seed),
                    a.std,
                    a.scale,
                    static_cast<float>(a.std),
                    static_cast<float>(a.scale),
                    a.centered && a.kind == kDiagFisherNoise,
                    a.stochastic_rounding,
                    a.stochastic_state_rounding};
  const size_t n = l.params.size();
  const bool rows = noise_reads_rows(static_cast<int>(a.kind));
  check_length(a.grad_samples, "grad_samples", rows ? n : 0,
               "one per param when noise_kind reads grad_sample (2 or 3), else none");
  if (!a.uses_offsets() || n == 0) return;
  TORCH_CHECK(!a.stochastic_rounding || l.params[0].scalar_type() == at::kBFloat16, kOp,
              "stochastic_rounding=True rounds bfloat16 params, but params are ", l.params[0].scalar_type());
  TORCH_CHECK(!a.stochastic_state_rounding || l.exp_avgs[0].scalar_type() == at::kBFloat16, kOp,
              "stochastic_state_rounding=True rounds bfloat16 state, but the state is ", l.exp_avgs[0].scalar_type());
  TORCH_CHECK(a.offsets.size() == n, kOp, "offsets has ", a.offsets.size(), " entries but ", n,
              " were expected (one global element offset per param with noise or stochastic rounding)");
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(a.offsets[i] >= 0, kOp, "offsets[", i, "] is ", a.offsets[i], "; global offsets are >= 0");
    if (noise_draws_normals(static_cast<int>(a.kind))) {
      check_row_major(l.params[i], i, a.kind == kIsotropicNoise ? "noise_kind=1" : "noise_kind=2");
    }
    if (a.stochastic_rounding) check_row_major(l.params[i], i, "stochastic_rounding=True");
    if (a.stochastic_state_rounding) check_row_major(l.params[i], i, "stochastic_state_rounding=True");
  }
  if (!rows) return;
  const at::Tensor& first = a.grad_samples[0];
  TORCH_CHECK(first.defined() && first.dim() >= 1 && first.size(0) >= 1, kOp,
              "grad_samples[0] must be [B, *params[0].shape] with B >= 1");
  const int64_t batch = first.size(0);
  TORCH_CHECK(batch <= std::numeric_limits<int32_t>::max(), kOp, "batch size ", batch, " is too large");
  for (size_t i = 0; i < n; ++i) check_rows(a.grad_samples[i], i, l.params[i], batch);
  out->batch = static_cast<int32_t>(batch);
  if (a.kind == kMultiplicativeNoise) {
    const at::Tensor* w = a.sample_weights.has_value() ? &*a.sample_weights : nullptr;
    TORCH_CHECK(w != nullptr && w->defined(), kOp, "multiplicative noise (noise_kind=3) needs sample_weights");
    TORCH_CHECK(w->scalar_type() == at::kFloat && w->dim() == 1 && w->size(0) == batch &&
                    w->device() == l.params[0].device(),
                kOp, "sample_weights must be float32 [", batch, "] on ", l.params[0].device(), " but is ",
                w->scalar_type(), " ", w->sizes(), " on ", w->device());
  }
}

void check_blockwise(const FusedStepLists& l, const BlockwiseArgs& b, const NoiseArgs& noise) {
  const size_t n = l.params.size();
  if (!b.enabled()) {
    TORCH_CHECK(b.block_size == 0, kOp, "block_size must be 0 (no 8-bit state) or a power of two in [16, 2048], got ",
                b.block_size);
    check_length(b.scales, "state_scales", 0, "none without 8-bit state (block_size=0)");
    TORCH_CHECK(!b.code_books.has_value(), kOp, "code_books is for 8-bit state only (block_size > 0)");
    return;
  }
  const int64_t bs = b.block_size;
  TORCH_CHECK(bs >= 16 && bs <= 2048 && (bs & (bs - 1)) == 0, kOp,
              "block_size must be 0 (no 8-bit state) or a power of two in [16, 2048], got ", bs);
  TORCH_CHECK(!noise.stochastic_state_rounding, kOp,
              "stochastic_state_rounding=True rounds bfloat16 state; 8-bit state is rounded to its codes");
  const size_t lists = l.state_lists();
  check_length(b.scales, "state_scales", lists * n, "one per tensor and state list with 8-bit state");
  if (n == 0) return;
  const at::Tensor& p0 = l.params[0];
  TORCH_CHECK(p0.scalar_type() == at::kFloat || p0.scalar_type() == at::kBFloat16, kOp,
              "8-bit state is for float32 and bfloat16 params, but params are ", p0.scalar_type());
  const at::Tensor* books = b.code_books.has_value() ? &*b.code_books : nullptr;
  TORCH_CHECK(books != nullptr && books->defined(), kOp, "8-bit state (block_size > 0) needs code_books");
  TORCH_CHECK(books->scalar_type() == at::kFloat && books->dim() == 2 && books->size(0) == 4 &&
                  books->size(1) == 256 && books->is_contiguous() && books->device() == p0.device(),
              kOp, "code_books must be a contiguous float32 [4, 256] tensor on ", p0.device(), " but is ",
              books->scalar_type(), " ", books->sizes(), " on ", books->device());
  const at::TensorList state[] = {l.exp_avgs, l.neg_exp_avgs, l.exp_avg_sqs, l.max_exp_avg_sqs};
  for (size_t i = 0; i < n; ++i) {
    // Blocks follow the row-major index, which the kernels walk as memory order.
    check_row_major(l.params[i], i, "8-bit state");
    const int64_t blocks = (l.params[i].numel() + bs - 1) / bs;
    size_t list = 0;
    for (const at::TensorList& codes : state) {
      if (codes.empty()) continue;
      const at::Tensor& s = b.scales_of(list, i, n);
      const std::string name = "state_scales[" + std::to_string(list * n + i) + "]";
      TORCH_CHECK(s.defined(), kOp, name, " is undefined");
      TORCH_CHECK(s.scalar_type() == at::kFloat && s.dim() == 1 && s.is_contiguous() && s.device() == p0.device(),
                  kOp, name, " must be a contiguous 1-D float32 tensor on ", p0.device(), " but is ", s.scalar_type(),
                  " ", s.sizes(), " on ", s.device());
      TORCH_CHECK(s.numel() == blocks, kOp, name, " has ", s.numel(), " scales but params[", i, "] has ",
                  l.params[i].numel(), " elements: ", blocks, " blocks of ", bs);
      TORCH_CHECK(codes[i].is_contiguous(), kOp, "8-bit codes of params[", i, "] must be contiguous");
      ++list;
    }
  }
}

}  // namespace

std::vector<at::Tensor> grad_sources_like_params(const FusedStepLists& l, const NoiseArgs& a) {
  std::vector<at::Tensor> out;
  if (!noise_reads_rows(static_cast<int>(a.kind))) {
    bool all_alike = true;
    for (size_t i = 0; i < l.params.size() && all_alike; ++i) all_alike = same_layout(l.grads[i], l.params[i]);
    if (all_alike) return out;
    out.reserve(l.params.size());
    for (size_t i = 0; i < l.params.size(); ++i) {
      const at::Tensor& g = l.grads[i];
      const at::Tensor& p = l.params[i];
      out.push_back(same_layout(g, p) ? g : at::empty_strided(p.sizes(), p.strides(), g.options()).copy_(g));
    }
    return out;
  }
  out.reserve(l.params.size());
  for (size_t i = 0; i < l.params.size(); ++i) {
    const at::Tensor& p = l.params[i];
    const at::Tensor& rows = a.grad_samples[i];
    std::vector<int64_t> layout{p.numel()};
    layout.insert(layout.end(), p.strides().begin(), p.strides().end());
    if (p.numel() == 0 || rows.strides() == at::IntArrayRef(layout)) {
      out.push_back(rows);
    } else {
      out.push_back(at::empty_strided(rows.sizes(), layout, rows.options()).copy_(rows));
    }
  }
  return out;
}

std::vector<at::TensorList> FusedStepLists::elementwise(at::TensorList grad_source) const {
  std::vector<at::TensorList> out{params, grad_source, exp_avgs};
  if (pn()) out.push_back(neg_exp_avgs);
  if (second_moment()) out.push_back(exp_avg_sqs);
  if (amsgrad()) out.push_back(max_exp_avg_sqs);
  return out;
}

StepHyper check_fused_step_inputs(const FusedStepLists& l, int64_t momentum, double lr, double beta1, double beta2,
                                  double beta0, double eps, double weight_decay, bool decoupled, bool nesterov,
                                  bool maximize, int64_t demon_total_steps, double demon_delay,
                                  const ScalarTensors& scalars, const NoiseArgs& noise,
                                  const BlockwiseArgs& blockwise, c10::DeviceType device_type,
                                  NoiseHyper* noise_out) {
  TORCH_CHECK(noise.kind >= kNoNoise && noise.kind <= kMultiplicativeNoise, kOp,
              "noise_kind must be 0 (none), 1 (isotropic), 2 (diag_fisher) or 3 (multiplicative), got ", noise.kind);
  TORCH_CHECK(momentum == kHeavyBall || momentum == kEma || momentum == kPn, kOp,
              "momentum must be 0 (heavy_ball), 1 (ema) or 2 (pn), got ", momentum);
  TORCH_CHECK(demon_total_steps >= 0, kOp, "demon_total_steps must be >= 0, got ", demon_total_steps);
  TORCH_CHECK(demon_delay >= 0.0 && demon_delay < 1.0, kOp, "demon_delay must be in [0, 1), got ", demon_delay);

  const size_t n = l.params.size();
  const bool second = !l.exp_avg_sqs.empty();
  const bool rows = noise_reads_rows(static_cast<int>(noise.kind));
  check_length(l.grads, "grads", rows ? 0 : n,
               rows ? "none: this noise_kind reads grad_samples instead" : "one per param");
  check_length(l.exp_avgs, "exp_avgs", n, "one per param");
  check_length(l.steps, "steps", n, "one per param");
  check_length(l.neg_exp_avgs, "neg_exp_avgs", momentum == kPn ? n : 0, "one per param with momentum=pn, else none");
  if (second) check_length(l.exp_avg_sqs, "exp_avg_sqs", n, "one per param, or none");
  if (!l.max_exp_avg_sqs.empty()) {
    TORCH_CHECK(second, kOp, "max_exp_avg_sqs (amsgrad) needs exp_avg_sqs");
    check_length(l.max_exp_avg_sqs, "max_exp_avg_sqs", n, "one per param, or none");
  }
  const bool track_prod = second && demon_total_steps > 0;
  check_length(l.beta1_prods, "beta1_prods", track_prod ? n : 0,
               "one per param with a second moment and Demon, else none");

  StepHyper h{lr,      beta1,           beta2,    beta0,    eps,     weight_decay, demon_delay, demon_total_steps,
              static_cast<int32_t>(momentum), decoupled, nesterov, maximize, second,  track_prod};
  if (n == 0) {
    check_noise(l, noise, noise_out);
    check_blockwise(l, blockwise, noise);
    return h;
  }

  const at::Tensor& p0 = l.params[0];
  TORCH_CHECK(p0.defined(), kOp, "params[0] is undefined");
  const c10::Device device = p0.device();
  TORCH_CHECK(device.type() == device_type, kOp, "params[0] is on ", device, " but this is the ",
              c10::DeviceTypeName(device_type), " kernel");
  const at::ScalarType dtype = p0.scalar_type();
  TORCH_CHECK(supported_dtype(dtype), kOp, "params[0] has dtype ", dtype,
              "; supported: float32, float64, float16, bfloat16");
  // The state lists share one dtype: the params', float32 for float16/bfloat16 params, bfloat16
  // for float32 params, or uint8 codes with 8-bit state.
  TORCH_CHECK(l.exp_avgs[0].defined(), kOp, "exp_avgs[0] is undefined");
  const at::ScalarType state = l.exp_avgs[0].scalar_type();
  TORCH_CHECK(blockwise.enabled() == (state == at::kByte), kOp, "exp_avgs[0] has dtype ", state, " but block_size is ",
              blockwise.block_size, ": uint8 state is 8-bit codes, which need block_size > 0, and only they do");
  TORCH_CHECK(state == at::kByte || state == dtype || (state == at::kFloat && (dtype == at::kHalf || dtype == at::kBFloat16)) ||
                  (state == at::kBFloat16 && dtype == at::kFloat),
              kOp, "exp_avgs[0] has dtype ", state, " but params have ", dtype,
              "; the state must have the params' dtype, float32 for float16/bfloat16 params, or bfloat16 for "
              "float32 params");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = l.params[i];
    TORCH_CHECK(p.defined(), kOp, "params[", i, "] is undefined");
    TORCH_CHECK(p.device() == device, kOp, "params[", i, "] is on ", p.device(), " but params[0] is on ", device);
    TORCH_CHECK(p.scalar_type() == p0.scalar_type(), kOp, "params[", i, "] has dtype ", p.scalar_type(),
                " but params[0] has ", p0.scalar_type(), " (one call updates one dtype)");
    check_like_param(p, "params", i, p, dtype);
    if (!rows) check_like_param(l.grads[i], "grads", i, p, dtype, /*any_layout=*/true);
    check_like_param(l.exp_avgs[i], "exp_avgs", i, p, state);
    if (!l.neg_exp_avgs.empty()) check_like_param(l.neg_exp_avgs[i], "neg_exp_avgs", i, p, state);
    if (!l.exp_avg_sqs.empty()) check_like_param(l.exp_avg_sqs[i], "exp_avg_sqs", i, p, state);
    if (!l.max_exp_avg_sqs.empty()) check_like_param(l.max_exp_avg_sqs[i], "max_exp_avg_sqs", i, p, state);
    check_scalar(l.steps[i], "steps[" + std::to_string(i) + "]", device, at::kDouble);
    if (!l.beta1_prods.empty()) {
      check_scalar(l.beta1_prods[i], "beta1_prods[" + std::to_string(i) + "]", device, at::kDouble);
    }
  }
  if (scalars.grad_scale.has_value()) check_scalar(*scalars.grad_scale, "grad_scale", device, at::kFloat);
  if (scalars.found_inf.has_value()) check_scalar(*scalars.found_inf, "found_inf", device, at::kFloat);
  if (scalars.lr.has_value()) check_scalar(*scalars.lr, "lr_tensor", device, at::kFloat);
  check_noise(l, noise, noise_out);
  check_blockwise(l, blockwise, noise);
  return h;
}

}  // namespace noisefuse
