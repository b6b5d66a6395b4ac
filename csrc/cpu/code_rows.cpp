// The code-book rows of the O(1) code decision (noisefuse/blockwise_codes.h, cpu_step.h): one set
// per distinct [4, 256] table the op has seen (two books in practice), built at first use from the
// float32 points themselves, so they can never disagree with the books the kernel multiplies.
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu_step.h"
#include "noisefuse/blockwise_codes.h"

namespace noisefuse {
namespace {

struct BookRows {
  float books[kCodeBookRows * kNumCodes];
  CodeRow rows[kCodeBookRows];
};

}  // namespace

const CodeRow* code_rows(const float* code_books) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<BookRows>> known;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const auto& b : known) {
    if (std::memcmp(b->books, code_books, sizeof(b->books)) == 0) return b->rows;
  }
  auto b = std::make_unique<BookRows>();
  std::memcpy(b->books, code_books, sizeof(b->books));
  for (int row = 0; row < kCodeBookRows; ++row) build_code_row(b->books + row * kNumCodes, &b->rows[row]);
  known.push_back(std::move(b));
  return known.back()->rows;
}

}  // namespace noisefuse
