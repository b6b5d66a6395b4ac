// The bucket tables of the code books (noisefuse/blockwise_codes.h, cpu_step.h): one set per distinct
// [4, 256] table the op has seen (two books in practice), built at first use from the float32
// points themselves, so they can never disagree with the books the kernel multiplies.
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu_step.h"
#include "noisefuse/blockwise_codes.h"

namespace noisefuse {
namespace {

constexpr int kRows = 4, kCodes = 256;

struct BookBuckets {
  float books[kRows * kCodes];
  alignas(64) uint8_t tables[kRows * kBucketTableStride];
};

}  // namespace

const uint8_t* code_buckets(const float* code_books) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<BookBuckets>> known;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const auto& b : known) {
    if (std::memcmp(b->books, code_books, sizeof(b->books)) == 0) return b->tables;
  }
  auto b = std::make_unique<BookBuckets>();
  std::memcpy(b->books, code_books, sizeof(b->books));
  for (int row = 0; row < kRows; ++row) build_code_buckets(b->books + row * kCodes, b->tables + row * kBucketTableStride);
  known.push_back(std::move(b));
  return known.back()->tables;
}

}  // namespace noisefuse
