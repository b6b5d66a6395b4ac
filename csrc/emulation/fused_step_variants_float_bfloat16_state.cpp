// csrc/cuda/fused_step_variants_float_bfloat16_state.cu compiled through the CUDA emulation (emulated_ops.cpp).
#include "cuda_emulation.h"

#include "fused_step_variants_float_bfloat16_state.cu"
