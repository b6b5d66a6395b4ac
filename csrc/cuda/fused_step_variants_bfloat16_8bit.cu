// The CUDA kernel variants for bfloat16 params with 8-bit blockwise state, the params rounded to
// nearest or stochastically.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_blockwise.cuh"

namespace noisefuse {
namespace cuda {

template void launch_blockwise<at::BFloat16, kRoundNone>(const std::vector<at::TensorList>&, const FusedStepLists&,
                                                         const BlockwiseArgs&, const StepHyper&, const LaunchNoise&,
                                                         const DeviceScalars&);
template void launch_blockwise<at::BFloat16, kRoundParams>(const std::vector<at::TensorList>&, const FusedStepLists&,
                                                           const BlockwiseArgs&, const StepHyper&, const LaunchNoise&,
                                                           const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
