// The op schemas of noisefuse (docs/kernel-contract.md) and the Python module that loads them.
// Kernels register against these schemas per device (csrc/cpu, csrc/cuda); the dispatcher picks.
#include <Python.h>
#include <torch/library.h>

#include "noisefuse/op_schemas.h"

extern "C" {
// `import noisefuse._C` runs the static TORCH_LIBRARY initialisers below; the module is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(noisefuse, m) {
  m.def(noisefuse::kFusedStepSchema);
  m.def(noisefuse::kSampleWeightsSchema);
}
