// csrc/cuda/fused_step_variants_float_8bit.cu compiled through the CUDA emulation (emulated_ops.cpp).
#include "cuda_emulation.h"

#include "fused_step_variants_float_8bit.cu"
