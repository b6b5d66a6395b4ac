// Test ops that expose csrc/include/noisefuse/philox.h, so tests can prove that the C++ generator
// equals the torch reference (noisefuse/random/philox.py) bit for bit. Registered as a fragment
// of the `noisefuse` library whose main schema lives in csrc/noisefuse.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "noisefuse/philox.h"

namespace {

// The seed arrives as a signed int64 (the schema's `int`); its bits are the uint64 seed.
uint64_t seed_bits(int64_t seed) { return static_cast<uint64_t>(seed); }

// counters: int64 [..., 4] holding uint32 words -> int64 [..., 4] output words.
at::Tensor philox4x32_10_cpu(const at::Tensor& counters, int64_t seed) {
  TORCH_CHECK(counters.scalar_type() == at::kLong, "philox4x32_10: counters must be int64");
  TORCH_CHECK(counters.dim() >= 1 && counters.size(-1) == 4, "philox4x32_10: counters must be [..., 4]");
  const at::Tensor in = counters.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t* c = in.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t s = seed_bits(seed);
  for (int64_t n = 0; n < in.numel() / 4; ++n) {
    const auto w = noisefuse::philox::philox4x32_10(
        static_cast<uint32_t>(c[4 * n]), static_cast<uint32_t>(c[4 * n + 1]), static_cast<uint32_t>(c[4 * n + 2]),
        static_cast<uint32_t>(c[4 * n + 3]), static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
    for (int k = 0; k < 4; ++k) o[4 * n + k] = static_cast<int64_t>(w.x[k]);
  }
  return out;
}

// index: int64 global element indices (as uint64 bits) -> float32 N(0, 1), one per index.
at::Tensor philox_normal_cpu(const at::Tensor& index, int64_t seed, int64_t step, int64_t tag) {
  TORCH_CHECK(index.scalar_type() == at::kLong, "philox_normal: index must be int64");
  const at::Tensor in = index.contiguous();
  at::Tensor out = at::empty(in.sizes(), in.options().dtype(at::kFloat));
  const int64_t* idx = in.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  for (int64_t n = 0; n < in.numel(); ++n) {
    o[n] = noisefuse::philox::element_normal(seed_bits(seed), static_cast<uint64_t>(step),
                                             static_cast<uint32_t>(tag), static_cast<uint64_t>(idx[n]));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefuse, m) {
  m.def("philox4x32_10(Tensor counters, int seed) -> Tensor");
  m.def("philox_normal(Tensor index, int seed, int step, int tag) -> Tensor");
}

TORCH_LIBRARY_IMPL(noisefuse, CPU, m) {
  m.impl("philox4x32_10", &philox4x32_10_cpu);
  m.impl("philox_normal", &philox_normal_cpu);
}
