// Multi-tensor launches for noisefuse's CUDA kernels: a list of same-dtype tensors becomes a few
// kernel launches whose argument is a table of raw pointers and sizes passed by value, with one
// thread block per chunk of kChunkSize elements (docs/backends/native.md, "CUDA").
//
// Unlike a per-block (tensor, chunk) map, the table stores each tensor's first block index; a
// block finds its tensor by a binary search over those few entries. The table's size then bounds
// only the number of tensors per launch, never the number of elements: the grid has one block per
// chunk of every tensor in the table, however large they are.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace noisefuse {
namespace cuda {

constexpr int64_t kChunkSize = 65536;  // elements per block
constexpr int kBlockThreads = 512;
constexpr int kIlp = 4;  // elements per thread per iteration (one vector load when aligned)

// CUDA's classic 4 KB kernel-parameter limit, valid for every toolkit, driver and architecture.
// The table takes at most kTableBytes; the rest holds the call's StepHyper and AMP pointers.
constexpr size_t kKernelParamBytes = 4096;
constexpr size_t kTableBytes = 3840;

// The pointer/size table of one launch. kLists element-wise lists (params, grads or grad_sample
// rows, buffers) plus each tensor's step counter and Demon product, both read in-kernel
// (capturable: no host reads), and with kOffsets each tensor's global element offset (noise that
// draws per-element normals: one int64 more per tensor, so a few tensors fewer per launch).
template <int kLists, bool kOffsets = false>
struct TensorTable {
  static constexpr int kBytesPerTensor = kLists * sizeof(void*) + 2 * sizeof(double*) + sizeof(int64_t) +
                                         sizeof(int32_t) + (kOffsets ? sizeof(int64_t) : 0);
  static constexpr int kMaxTensors = (kTableBytes - 2 * sizeof(int32_t) - sizeof(int64_t)) / kBytesPerTensor;

  void* ptrs[kLists][kMaxTensors];
  double* steps[kMaxTensors];
  double* beta1_prods[kMaxTensors];  // null when the call tracks no Demon product
  int64_t numel[kMaxTensors];
  int64_t offsets[kOffsets ? kMaxTensors : 1];  // global index of element 0; unused without kOffsets
  int32_t first_block[kMaxTensors + 1];  // first_block[num_tensors] is the grid size
  int32_t num_tensors;
};

// The table entry that block `block` works on: the last tensor whose first block is <= block
// (empty tensors own no block, so ties resolve to the non-empty tensor after them).
template <typename Table>
C10_DEVICE inline int locate_tensor(const Table& table, int32_t block) {
  int lo = 0, hi = table.num_tensors;  // invariant: first_block[lo] <= block < first_block[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (table.first_block[mid] <= block) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Fills tables with the tensors of `lists` (each a per-param list, all of equal length) in order
// and calls launch(table) whenever a table is full and once at the end. A tensor is never split
// across tables, so a launch's counters can be advanced right after it on the same stream.
template <int kLists, bool kOffsets, typename Launch>
void multi_tensor_apply(const std::vector<at::TensorList>& lists, at::TensorList steps, at::TensorList beta1_prods,
                        at::IntArrayRef offsets, Launch&& launch) {
  using Table = TensorTable<kLists, kOffsets>;
  TORCH_INTERNAL_ASSERT(!kOffsets || offsets.size() == lists[0].size());
  TORCH_INTERNAL_ASSERT(lists.size() == static_cast<size_t>(kLists));
  Table table;
  table.num_tensors = 0;
  table.first_block[0] = 0;
  const size_t n = lists[0].size();
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = lists[0][i].numel();
    const int64_t blocks = (numel + kChunkSize - 1) / kChunkSize;
    TORCH_CHECK(blocks < std::numeric_limits<int32_t>::max(), "noisefuse.fused_step_: params[", i, "] has ", numel,
                " elements, more than one launch can cover");
    const int32_t used = table.first_block[table.num_tensors];
    if (table.num_tensors == Table::kMaxTensors || blocks > std::numeric_limits<int32_t>::max() - used) {
      launch(table);
      table.num_tensors = 0;
    }
    const int k = table.num_tensors;
    for (int list = 0; list < kLists; ++list) {
      // List 1 (grads, or grad_sample rows) is only read: const_data_ptr, so that a copy-on-write
      // tensor is not materialized.
      table.ptrs[list][k] =
          list == 1 ? const_cast<void*>(lists[list][i].const_data_ptr()) : lists[list][i].data_ptr();
    }
    table.steps[k] = steps[i].data_ptr<double>();
    table.beta1_prods[k] = beta1_prods.empty() ? nullptr : beta1_prods[i].data_ptr<double>();
    table.numel[k] = numel;
    if (kOffsets) table.offsets[k] = offsets[i];
    table.first_block[k + 1] = table.first_block[k] + static_cast<int32_t>(blocks);
    table.num_tensors = k + 1;
  }
  if (table.num_tensors > 0) launch(table);
}

}  // namespace cuda
}  // namespace noisefuse
