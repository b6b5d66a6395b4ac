// The CUDA kernel variants for float16 params, with float16 or float32 state.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

template void launch_typed<at::Half, at::Half, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);
template void launch_typed<at::Half, float, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
