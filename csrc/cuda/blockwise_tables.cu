// The bucket tables of the 8-bit kernel (blockwise_tables.h), built by a kernel and kept per books
// tensor.
#include "blockwise_tables.h"

#include <memory>
#include <mutex>
#include <vector>

#include <ATen/ops/empty.h>

#include "kernel_launch.cuh"

namespace noisefuse {
namespace cuda {
namespace {

constexpr int kBuildThreads = 256;
constexpr int kTableEntries = 3 * kBucketTableBytes;
constexpr size_t kKeptTables = 8;  // books tensors remembered (two books per device in practice)

// One bucket start per thread, from the [4, 256] books (the same float64 search as the host's rows).
__global__ void __launch_bounds__(kBuildThreads) build_bucket_tables_kernel(const float* code_books, uint8_t* out) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= kTableEntries) return;
  const int row = i / kBucketTableBytes;
  out[i] = static_cast<uint8_t>(bucket_start(code_books + decision_row(row) * 256, i % kBucketTableBytes));
}

struct KeptTable {
  at::Tensor books;  // held, so that its address cannot name another tensor while the entry lives
  int64_t version;
  at::Tensor table;
};

}  // namespace

at::Tensor bucket_tables(const at::Tensor& code_books) {
  static std::mutex mutex;
  // Never destroyed: device tensors must not be freed by static destructors at exit.
  static auto* kept = new std::vector<std::unique_ptr<KeptTable>>();
  const std::lock_guard<std::mutex> lock(mutex);
  for (const auto& entry : *kept) {
    if (entry->books.is_same(code_books) && entry->version == code_books._version()) return entry->table;
  }
  if (kept->size() >= kKeptTables) kept->erase(kept->begin());
  auto entry = std::make_unique<KeptTable>();
  entry->books = code_books;
  entry->version = code_books._version();
  entry->table = at::empty({kTableEntries}, code_books.options().dtype(at::kByte));
  launch_kernel(build_bucket_tables_kernel, (kTableEntries + kBuildThreads - 1) / kBuildThreads, kBuildThreads,
                code_books.const_data_ptr<float>(), entry->table.mutable_data_ptr<uint8_t>());
  kept->push_back(std::move(entry));
  return kept->back()->table;
}

}  // namespace cuda
}  // namespace noisefuse
