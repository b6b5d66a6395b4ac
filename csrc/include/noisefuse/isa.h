// The instruction-set namespace of noisefuse's header-defined functions.
//
// The CPU kernel is compiled twice: for the baseline ISA (fused_step_cpu.cpp) and for AVX2+FMA
// (fused_step_cpu_avx2.cpp, which raises its own target). An inline or template function from a
// shared header is emitted in every translation unit that uses it, as a weak symbol of one mangled
// name, and the linker keeps a single copy: if that were the AVX2 one, the baseline kernel would
// execute AVX2 code (SIGILL on a CPU without it) and FMA-contracted math. So every function in
// these headers lives in `noisefuse::NF_ISA_NS`, an inline namespace (callers still write
// noisefuse::f) whose name the AVX2 file sets to `isa_avx2` before its first include, as ATen
// does with CPU_CAPABILITY. Plain data types (StepHyper, CpuStep, ...) stay in `noisefuse` itself:
// they cross from the op into both builds and must be one type. tests/test_native_noise.py checks
// the built library.
#pragma once

#ifndef NF_ISA_NS
#define NF_ISA_NS isa_baseline
#endif
