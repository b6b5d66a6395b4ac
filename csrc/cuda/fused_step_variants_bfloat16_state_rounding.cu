// The CUDA kernel variants for bfloat16 params with bfloat16 state rounded stochastically, the
// params rounded to nearest or stochastically.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

template void launch_typed<at::BFloat16, at::BFloat16, kRoundState>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);
template void launch_typed<at::BFloat16, at::BFloat16, kRoundParams | kRoundState>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
