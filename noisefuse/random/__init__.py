"""The one counter-based random stream of noisefuse: Philox4x32-10 (SPEC.md section 5).

``philox`` is the vectorised torch version (the reference of every backend); ``philox_triton``
holds the same generator as ``@triton.jit`` functions; ``csrc/include/noisefuse/philox.h`` holds
it for the C++ CPU and CUDA kernels. ``rounding`` draws the stochastic rounding of bfloat16 params
and of bfloat16 state from the same stream."""
from .philox import (MASK32, TAG_DIAG_FISHER, TAG_ISOTROPIC, TAG_ROUNDING, TAG_WEIGHTS, box_muller,
                     element_normals, element_normals_multi, normals_at, philox4x32, seed_as_int64, split_seed,
                     uniform, weight_words)
from .rounding import (MAX_SECOND_MOMENT, MOMENTUM, PARAM, SECOND_MOMENT, Rounding, round_bf16_with,
                       rounding_bits_at, rounding_bits_multi, stochastic_round_bf16, stochastic_round_bf16_multi)

__all__ = ["philox4x32", "uniform", "box_muller", "normals_at", "element_normals", "element_normals_multi",
           "weight_words", "split_seed", "seed_as_int64", "MASK32", "TAG_ISOTROPIC", "TAG_DIAG_FISHER",
           "TAG_WEIGHTS", "TAG_ROUNDING", "rounding_bits_at", "round_bf16_with", "stochastic_round_bf16",
           "stochastic_round_bf16_multi", "rounding_bits_multi", "Rounding", "PARAM", "MOMENTUM",
           "SECOND_MOMENT", "MAX_SECOND_MOMENT"]
