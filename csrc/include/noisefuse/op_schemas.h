// The schemas of noisefuse's ops (docs/kernel-contract.md), written once: the `noisefuse` library
// defines them (csrc/noisefuse.cpp), and the test-only `noisefuse_emulated` library of the CUDA
// emulation (csrc/emulation) defines the same ops under its own namespace.
#pragma once

namespace noisefuse {

constexpr const char* kFusedStepSchema =
    "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
    "Tensor(c!)[] neg_exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, "
    "Tensor(f!)[] steps, Tensor(g!)[] beta1_prods, Tensor[] grad_samples, *, int momentum, float lr, "
    "float beta1, float beta2, float beta0, float eps, float weight_decay, bool decoupled, "
    "bool nesterov, bool maximize, int demon_total_steps, float demon_delay, Tensor? grad_scale=None, "
    "Tensor? found_inf=None, Tensor? lr_tensor=None, Tensor? sample_weights=None, int[] offsets=[], "
    "int noise_kind=0, int seed=0, float noise_std=0., float noise_scale=0., bool noise_centered=False, "
    "bool stochastic_rounding=False, bool stochastic_state_rounding=False, Tensor(h!)[]? state_scales=None, "
    "Tensor? code_books=None, int block_size=0) -> ()";

// Multiplicative noise's weight vector of one step: float32 [batch_size] on `step`'s device.
constexpr const char* kSampleWeightsSchema =
    "sample_weights(Tensor step, int batch_size, int seed, int kind, float sigma, float prob) -> Tensor";

}  // namespace noisefuse
