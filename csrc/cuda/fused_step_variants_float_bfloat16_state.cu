// The CUDA kernel variants for float32 params with bfloat16 state, the state rounded to nearest or stochastically.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

template void launch_typed<float, at::BFloat16, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);
template void launch_typed<float, at::BFloat16, kRoundState>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
