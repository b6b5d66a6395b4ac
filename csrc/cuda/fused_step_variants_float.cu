// The CUDA kernel variants for float32 and float64 params (state of their own type).
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

template void launch_typed<float, float, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);
template void launch_typed<double, double, kRoundNone>(
    const std::vector<at::TensorList>&, const FusedStepLists&, const StepHyper&, const LaunchNoise&,
    const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
