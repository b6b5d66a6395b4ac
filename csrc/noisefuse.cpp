// The op schemas of noisefuse (docs/kernel-contract.md) and the Python module that loads them.
// Kernels register against these schemas per device (csrc/cpu, csrc/cuda); the dispatcher picks.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import noisefuse._C` runs the static TORCH_LIBRARY initialisers below; the module is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(noisefuse, m) {
  m.def(
      "fused_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] neg_exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, "
      "Tensor(f!)[] steps, Tensor(g!)[] beta1_prods, Tensor[] grad_samples, *, int momentum, float lr, "
      "float beta1, float beta2, float beta0, float eps, float weight_decay, bool decoupled, "
      "bool nesterov, bool maximize, int demon_total_steps, float demon_delay, Tensor? grad_scale=None, "
      "Tensor? found_inf=None, Tensor? lr_tensor=None, Tensor? sample_weights=None, int[] offsets=[], "
      "int noise_kind=0, int seed=0, float noise_std=0., float noise_scale=0., bool noise_centered=False, "
      "bool stochastic_rounding=False) -> ()");
  // Multiplicative noise's weight vector of one step: float32 [batch_size] on `step`'s device.
  m.def("sample_weights(Tensor step, int batch_size, int seed, int kind, float sigma, float prob) -> Tensor");
}
