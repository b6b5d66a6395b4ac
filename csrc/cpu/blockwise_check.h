// The plain-data arguments of the 8-bit code check (blockwise_check_kernel.h), for both kernel builds.
#pragma once

#include <cstdint>

#include "noisefuse/blockwise_codes.h"

namespace noisefuse {

struct BlockwiseCheck {
  const float* points;  // 255 decision points (a row of the code books)
  const CodeRow* row;   // the same row as encode_block reads it (code_rows)
  uint32_t scale_bits;     // the block's scale s >= 0, as float32 bits
  uint32_t first, last, stride;  // x takes the bit patterns first, first + stride, ... <= last
};

// counts: [patterns, codes of encode_block != the count, guesses that failed their check (the search
// decided them)]. In the baseline build encode_block is nearest_code per element.
namespace cpu_default {
void check_blockwise_codes(const BlockwiseCheck& args, int64_t* counts);
}
namespace cpu_avx2 {
void check_blockwise_codes(const BlockwiseCheck& args, int64_t* counts);
}

}  // namespace noisefuse
