// The device tables of the 8-bit kernel's O(1) code decision (noisefuse/blockwise_codes.h): for each
// buffer a step writes (the momentum, v, the amsgrad maximum), the start g of every bucket of its
// decision row, as CodeRow::buckets holds it on the host. Built on the device by a small kernel from
// the code books the op was given (no copy to the host, so a step stays capturable), once per books
// tensor, and kept: blockwise_tables.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include "noisefuse/blockwise_codes.h"

namespace noisefuse {
namespace cuda {

constexpr int kBucketTableBytes = 2 * kBucketsPerSign;  // one uint8 start per bucket and row

// The row of the [4, 256] code books that written buffer w decides against, in the kernel's order:
// nearest for m and v (the signed and unsigned midpoints), rounded up for the maximum (the unsigned
// values): rows 1, 3, 2 (CodeBookRow, noisefuse/blockwise_codes.h).
C10_HOST_DEVICE constexpr int decision_row(int w) { return w == 0 ? 1 : (w == 1 ? 3 : 2); }

// uint8 [3, kBucketTableBytes] on the books' device: the bucket starts of the three rows. The first
// call for a books tensor (its address and version) launches the build on the current stream; later
// calls return the same tensor. A table the kernel reads before its build is done can only slow it:
// every guess is checked, and a wrong one falls back to the search.
at::Tensor bucket_tables(const at::Tensor& code_books);

}  // namespace cuda
}  // namespace noisefuse
