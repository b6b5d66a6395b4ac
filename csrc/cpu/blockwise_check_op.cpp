// Test op for tests/test_blockwise_codes.py: `torch.ops.noisefuse._blockwise_codes_check` runs one
// kernel build's 8-bit code decision (blockwise_check_kernel.h) over a range of float32 bit patterns
// at one scale and counts where it differs from the contract's count. Registered as a fragment of
// the `noisefuse` library (as philox_ops.cpp); the fused step does not use it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "blockwise_check.h"
#include "cpu_step.h"
#include "noisefuse/blockwise_codes.h"

namespace {

// -> int64 [4]: patterns checked, codes of encode_block that differ from the count, failed guesses
// (decided by the search), and the most points any widened bucket of the row holds.
at::Tensor blockwise_codes_check(const at::Tensor& code_books, int64_t row, int64_t scale_bits, int64_t first,
                                 int64_t last, int64_t stride, bool avx2) {
  TORCH_CHECK(code_books.scalar_type() == at::kFloat && code_books.is_contiguous() &&
                  code_books.sizes() == at::IntArrayRef({4, 256}),
              "_blockwise_codes_check: code_books must be float32 [4, 256]");
  TORCH_CHECK(0 <= row && row < 4, "_blockwise_codes_check: row in [0, 4)");
  TORCH_CHECK(0 <= scale_bits && scale_bits <= 0x7f7fffff, "_blockwise_codes_check: the scale must be finite and >= 0");
  TORCH_CHECK(0 <= first && first <= last && last <= 0xffffffffLL && stride >= 1,
              "_blockwise_codes_check: 0 <= first <= last < 2^32, stride >= 1");
#if defined(__x86_64__) && defined(__GNUC__)
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  const bool has_avx2 = false;
#endif
  TORCH_CHECK(!avx2 || (noisefuse::cpu_avx2::kCompiled && has_avx2), "_blockwise_codes_check: no AVX2 build or CPU");
  const float* books = code_books.const_data_ptr<float>();
  const float* points = books + row * 256;
  const noisefuse::BlockwiseCheck args{points, noisefuse::code_rows(books) + row,
                                       static_cast<uint32_t>(scale_bits), static_cast<uint32_t>(first),
                                       static_cast<uint32_t>(last), static_cast<uint32_t>(stride)};
  at::Tensor out = at::zeros({4}, code_books.options().dtype(at::kLong));
  int64_t* counts = out.data_ptr<int64_t>();
  if (avx2) {
    noisefuse::cpu_avx2::check_blockwise_codes(args, counts);
  } else {
    noisefuse::cpu_default::check_blockwise_codes(args, counts);
  }
  noisefuse::CodeRow built;
  counts[3] = noisefuse::build_code_row(points, &built);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefuse, m) {
  m.def("_blockwise_codes_check(Tensor code_books, int row, int scale_bits, int first, int last, int stride, "
        "bool avx2) -> Tensor");
}

TORCH_LIBRARY_IMPL(noisefuse, CPU, m) {
  m.impl("_blockwise_codes_check", &blockwise_codes_check);
}
