// The op schemas of noisefuse (docs/kernel-contract.md) and the Python module that loads them.
// Kernels register against these schemas per device (csrc/cpu, csrc/cuda); the dispatcher picks.
// Built against Python's limited API (setup.py: an abi3 module, one build for every CPython >= 3.10).
#include <Python.h>
#include <torch/library.h>
#include <torch/version.h>

#include "noisefuse/op_schemas.h"

#define NF_STRINGIFY_(x) #x
#define NF_STRINGIFY(x) NF_STRINGIFY_(x)

extern "C" {
// `import noisefuse._C` runs the static TORCH_LIBRARY initialisers below. The module holds one
// attribute, `torch_version`: the torch whose headers and libraries it was built against, which
// noisefuse/backends/native.py compares with the torch it is loaded into.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const char* version =
      NF_STRINGIFY(TORCH_VERSION_MAJOR) "." NF_STRINGIFY(TORCH_VERSION_MINOR) "." NF_STRINGIFY(TORCH_VERSION_PATCH);
  if (PyModule_AddStringConstant(module, "torch_version", version) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(noisefuse, m) {
  m.def(noisefuse::kFusedStepSchema);
  m.def(noisefuse::kSampleWeightsSchema);
}
