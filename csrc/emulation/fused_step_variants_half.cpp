// csrc/cuda/fused_step_variants_half.cu compiled through the CUDA emulation (emulated_ops.cpp).
#include "cuda_emulation.h"

#include "fused_step_variants_half.cu"
