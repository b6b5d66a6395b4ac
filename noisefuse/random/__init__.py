"""The one counter-based random stream of noisefuse: Philox4x32-10 (SPEC.md section 5).

``philox`` is the vectorised torch version (the reference of every backend); ``philox_triton``
holds the same generator as ``@triton.jit`` functions; ``csrc/include/noisefuse/philox.h`` holds
it for the C++ CPU and CUDA kernels."""
from .philox import (MASK32, TAG_DIAG_FISHER, TAG_ISOTROPIC, TAG_WEIGHTS, box_muller, element_normals,
                     element_normals_multi, normals_at, philox4x32, seed_as_int64, split_seed, uniform,
                     weight_words)

__all__ = ["philox4x32", "uniform", "box_muller", "normals_at", "element_normals", "element_normals_multi",
           "weight_words", "split_seed", "seed_as_int64", "MASK32", "TAG_ISOTROPIC", "TAG_DIAG_FISHER",
           "TAG_WEIGHTS"]
