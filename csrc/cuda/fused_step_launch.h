// The seam between the CUDA op (fused_step_cuda.cu) and its kernel variants: the variants of each
// (param type, state type, stochastic stores) are compiled in their own file (fused_step_variants_*.cu,
// explicit instantiations of launch_typed, and of launch_blockwise for 8-bit state), so a build
// compiles them in parallel; the op only declares them. Plain C++: no CUDA syntax, so the op's
// dispatch reads like the CPU one.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "noisefuse/fused_step_inputs.h"
#include "noisefuse/noise_element.h"
#include "noisefuse/step_scalars.h"

namespace noisefuse {
namespace cuda {

// The call's random-stream values as the launches see them.
struct LaunchNoise {
  NoiseHyper hyper;
  at::IntArrayRef offsets;  // one per tensor when the launches draw per element, else empty
  const float* weights;     // multiplicative noise: the step's B weights (device memory)
};

// The call's one-element float32 scalars in device memory (ScalarTensors), null where not given.
struct DeviceScalars {
  const float* grad_scale;
  const float* found_inf;
  const float* lr;  // replaces StepHyper::lr
};

// Which stores of a launch are rounded stochastically to bfloat16, a bit set (kRound): the params
// (bfloat16 params), the state (bfloat16 state). Any set bit makes the kernel draw once per element
// and its table carry the global offsets the draws are indexed by.
enum StochasticStores : int { kRoundNone = 0, kRoundParams = 1, kRoundState = 2 };

// Launches every table of `lists` for one (param type, state type, stochastic stores): the family
// flags and the noise kind become template parameters (fused_step_kernels.cuh). Instantiated in
// fused_step_variants_{float,half,bfloat16,bfloat16_rounding,float_bfloat16_state,
// bfloat16_state_rounding}.cu.
template <typename scalar_t, typename state_t, int kRound>
void launch_typed(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const StepHyper& h,
                  const LaunchNoise& noise, const DeviceScalars& scalars);

// The same for 8-bit blockwise state (fused_step_blockwise.cuh): uint8 codes in the state lists,
// their scales and the code books in `blockwise`. Float32 or bfloat16 params, the latter rounded to
// nearest or stochastically (kRound: kRoundNone or kRoundParams). Instantiated in
// fused_step_variants_{float,bfloat16}_8bit.cu.
template <typename scalar_t, int kRound>
void launch_blockwise(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const BlockwiseArgs& blockwise,
                      const StepHyper& h, const LaunchNoise& noise, const DeviceScalars& scalars);

}  // namespace cuda
}  // namespace noisefuse
