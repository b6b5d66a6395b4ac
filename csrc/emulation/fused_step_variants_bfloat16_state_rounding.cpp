// csrc/cuda/fused_step_variants_bfloat16_state_rounding.cu compiled through the CUDA emulation (emulated_ops.cpp).
#include "cuda_emulation.h"

#include "fused_step_variants_bfloat16_state_rounding.cu"
