// The CUDA kernel variants for float32 params with 8-bit blockwise state.
// One of eight files that split the kernel variants (fused_step_launch.h), so that a build compiles
// them in parallel.
#include "fused_step_blockwise.cuh"

namespace noisefuse {
namespace cuda {

template void launch_blockwise<float, kRoundNone>(const std::vector<at::TensorList>&, const FusedStepLists&,
                                                  const BlockwiseArgs&, const StepHyper&, const LaunchNoise&,
                                                  const DeviceScalars&);

}  // namespace cuda
}  // namespace noisefuse
