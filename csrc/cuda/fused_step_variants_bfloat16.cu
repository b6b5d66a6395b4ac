// The CUDA kernel variants for bfloat16 params rounded to nearest, with bfloat16 or float32 state.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

template void launch_typed<at::BFloat16, at::BFloat16, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);
template void launch_typed<at::BFloat16, float, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
