// csrc/cuda/blockwise_tables.cu compiled through the CUDA emulation (emulated_ops.cpp).
#include "cuda_emulation.h"

#include "blockwise_tables.cu"
