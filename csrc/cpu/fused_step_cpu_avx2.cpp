// The AVX2+FMA build of the CPU kernel (fused_step_cpu_kernel.h), chosen at run time when the CPU
// has AVX2, FMA and F16C. The extension is compiled with baseline flags (setup.py applies one set
// of flags to every file), so this file raises the target itself, as ATen's per-ISA kernel
// builds do with -mavx2: the kernel is AVX2 code, at::vec's AVX2 vectors live in their own
// CPU_CAPABILITY namespace, and only plain data (cpu_step.h) crosses into it.
//
// Keeping AVX2 code out of the baseline build: a shared inline function is emitted by every file
// that uses it and the linker keeps one copy (noisefuse/isa.h). noisefuse's own header functions
// get this file's namespace: NF_ISA_NS is set before any include, so they are
// noisefuse::isa_avx2::..., distinct symbols from the baseline ones. (The C++ library's and c10's
// inline functions cannot be renamed; including their headers before the pragma to keep them
// baseline is no remedy either: a baseline-target template instantiated with AVX vector types,
// e.g. the std::tuple of at::vec::convert_to_float, passes them under another ABI and crashes.)
// tests/test_native_noise.py checks the built library: every noisefuse inline function is in an
// ISA namespace, and no exported function outside the AVX2 namespaces contains AVX instructions.
// Every noisefuse header is parsed after the pragma: a template parsed before it keeps the baseline
// target and, instantiated with AVX vectors, passes them under another ABI (garbage, not an error).
#define NF_ISA_NS isa_avx2

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2,fma,f16c")
// The pragma does not define the ISA macros; sleef.h declares its 8-wide functions only under them.
// (No header of torch's tests them otherwise; __F16C__ stays undefined so c10::Half's shared
// inline conversions keep their baseline form.)
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define NF_CPU_KERNEL_NS cpu_avx2
#include "fused_step_cpu_kernel.h"
#include "blockwise_check_kernel.h"

namespace noisefuse::cpu_avx2 {
const bool kCompiled = true;
}
#else
#include "blockwise_check.h"
#include "cpu_step.h"

namespace noisefuse::cpu_avx2 {
const bool kCompiled = false;
void run_cpu_step(const CpuStep&) {}
void check_blockwise_codes(const BlockwiseCheck&, int64_t*) {}
}  // namespace noisefuse::cpu_avx2
#endif
