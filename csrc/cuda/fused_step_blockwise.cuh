// The CUDA kernel of noisefuse::fused_step_ with 8-bit blockwise state (docs/kernel-contract.md,
// "8-bit blockwise state"), as templates: fused_step_variants_{float,bfloat16}_8bit.cu instantiate
// them. Launches, tables, counters, noise, the per-element update and the params' stores are those of
// fused_step_kernels.cuh; what differs is how the state is loaded and stored.
//
// Each state buffer is uint8 codes plus one float32 scale per block of `block_size` (a power of two
// in [16, 2048]) elements of the tensor's flat index; the scales travel as extra pointer lists of
// the table, one per state list, offset to the chunk by start / block_size. Per element, with the
// code books' values and decision rows in shared memory:
//   dequantize   m = S[c] * s,   v = (U[c] * s)^2 (the buffer holds sqrt(v))
//   update       update_element.h, in float32
//   quantize     for each written buffer's new values x (m, sqrt_rn(v), sqrt_rn(vmax)) over a block:
//                s' = max |x| over its finite x (0 if none); x := 0 where NaN;
//                c' = #{k < 255 : T[k] * s' < x}, T = Ms (m), Mu (v), U (vmax, rounded up).
// c' comes in O(1) (noisefuse/blockwise_codes.h): a bucket table (blockwise_tables.h, in shared
// memory) guesses it from x * (1 / s') and one compare against a product T[k] * s'; in blocks of
// scale outside [2^-100, 2^126] two more compares prove the guess, and the contract's 8-step search
// decides where the proof fails (denormal scales). Products and
// comparisons only decide (__fmul_rn, so that nothing is contracted; a correctly rounded sqrt):
// given the same float32 values, the codes and scales are the reference's bit for bit.
//
// A block's scale needs every new value of the block first. The threads of a block walk their chunk
// in tiles of kTile = kBlockThreads * kIlp elements, each thread kIlp consecutive ones; a tile holds
// whole quantization blocks (block_size <= kTile and tiles start at multiples of kTile), the
// block_size / kIlp threads of one quantization block being consecutive. Each thread loads its
// elements' codes, scales, params and grads in one round, updates them in registers, writes its
// params, and takes its finite maximum of each written buffer into its quantization block's slot
// in shared memory by atomicMax on the bits (non-negative floats order as their bits, and a
// maximum does not depend on the order); after one barrier per tile every thread reads its block's
// scale and encodes its elements. No warp shuffles: the same code runs on the CUDA emulation, which
// has no warps.
#pragma once

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "blockwise_tables.h"
#include "fused_step_kernels.cuh"

namespace noisefuse {
namespace cuda {

constexpr int kMaxWritten = 3;  // buffers a step writes: the momentum, v, the amsgrad maximum

// Elements of one pass of a block's threads: whole quantization blocks of any size, and whole
// tiles in a chunk.
constexpr int kTile = kBlockThreads * kIlp;
static_assert(kTile % 2048 == 0 && kChunkSize % kTile == 0, "a tile must hold whole blocks of up to 2048 elements");

// The call's 8-bit state values as the kernel sees them.
struct BlockwiseHyper {
  const float* code_books;       // [4, 256] float32 (CodeBookRow), device memory
  const uint8_t* bucket_tables;  // [kWritten, kBucketTableBytes] (blockwise_tables.h), device memory
  int32_t block_shift;           // log2(block_size)
};

// The table: the element-wise lists (params, grads, kLists - 2 state lists of codes), then the
// scales of each state list in the same order.
template <int kLists, int kNoise, int kRound>
using BlockwiseTable = TensorTable<2 * kLists - 2, draws_per_element(kNoise, kRound)>;

// Lanes [i, i + kIlp) of `src` as type U: one vector load when `vector`, else one load per lane
// below n (the others 0).
template <typename T, typename U>
__device__ inline void load_lanes(const T* src, int i, int n, bool vector, U* out) {
  if (vector) {
    const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(src + i);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = static_cast<U>(pack.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = i + j < n ? static_cast<U>(src[i + j]) : U(0);
  }
}

template <typename T>
__device__ inline void store_lanes(T* dst, int i, int n, bool vector, const T* values) {
  if (vector) {
    Pack<T> pack;
#pragma unroll
    for (int j = 0; j < kIlp; ++j) pack.v[j] = values[j];
    *reinterpret_cast<Pack<T>*>(dst + i) = pack;
  } else {
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      if (i + j < n) dst[i + j] = values[j];
    }
  }
}

// |x| where x is finite, else 0: NaN and inf never set a scale.
__device__ inline float finite_magnitude(float x) {
  const float a = fabsf(x);
  return a <= FLT_MAX ? a : 0.f;
}

// One decision row of the code books in shared memory, as nearest_code reads it.
struct SharedCodeRow {
  const float* points;     // [kPaddedPoints]: NaN, T[0] .. T[254], +inf ...
  const uint8_t* buckets;  // [kBucketTableBytes]: the start g of each bucket (blockwise_tables.h)
};

// The codes of four values in a block whose scale lies outside [2^-100, 2^126] (guesses_are_counts),
// packed low byte first: each guess proved by two compares, the contract's search where the proof
// fails (denormal scales). Out of line, as such blocks are rare (a momentum of denormal values), so
// that the hot loop keeps the guesses alone (and the static SASS report counts the call as cold). A
// template: one definition per translation unit.
template <typename Row>
__device__ __noinline__ uint32_t codes_by_proved_guesses(const Row row, float scale, float inverse, float x0, float x1,
                                                          float x2, float x3) {
  const float x[4] = {x0, x1, x2, x3};
  uint32_t codes = 0;
  for (int j = 0; j < 4; ++j) {
    int c;
    if (!code_by_bucket(row, scale, inverse, x[j], &c)) {
      NF_COUNT_CODE_SEARCH();
      c = code_by_search(row, scale, x[j]);
    }
    codes |= static_cast<uint32_t>(c) << (8 * j);
  }
  return codes;
}

// The codes of a thread's kIlp new values x of one written buffer, in a block of scale `scale`: each
// the bucket's guess (noisefuse/blockwise_codes.h), which at all but the extreme scales is the count
// as it is; at those, codes_by_proved_guesses.
__device__ inline void encode_lanes(const SharedCodeRow& row, float scale, const float (&x)[kIlp], uint8_t (&out)[kIlp]) {
  static_assert(kIlp == 4, "codes_by_proved_guesses takes four values");
  if (!(scale > 0.f)) {  // every product is +-0
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = zero_scale_code(x[j]);
    return;
  }
  // Within 2 ulp of 1 / scale (CUDA's fast division), as code_by_guess needs.
  const float inverse = __fdividef(1.f, scale);
  float value[kIlp];
#pragma unroll
  for (int j = 0; j < kIlp; ++j) value[j] = x[j] != x[j] ? 0.f : x[j];
  if (guesses_are_counts(scale)) {
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = static_cast<uint8_t>(code_by_guess(row, scale, inverse, value[j]));
  } else {
    const uint32_t codes = codes_by_proved_guesses(row, scale, inverse, value[0], value[1], value[2], value[3]);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = static_cast<uint8_t>(codes >> (8 * j));
  }
}

static_assert(kBucketTableBytes % 4 == 0, "bucket tables copied a word at a time");

// Tiles in flight of the block maxima (below): one barrier per tile.
constexpr int kMaxSlots = 3;
constexpr int kMinBlockSize = 16;
constexpr int kTileBlocks = kTile / kMinBlockSize;  // quantization blocks a tile holds at most

template <typename scalar_t, bool kPn, int kSecond, int kLists, int kNoise, int kRound>
__global__ void __launch_bounds__(kBlockThreads, min_blocks_per_sm<scalar_t>(kSecond, kNoise, kRound))
    blockwise_step_kernel(const BlockwiseTable<kLists, kNoise, kRound> table, const StepHyper h,
                          const DeviceScalars scalars, const NoiseHyper noise, const float* weights,
                          const BlockwiseHyper q) {
  static_assert(std::is_same_v<at::opmath_type<scalar_t>, float>, "8-bit state is for float32 and bfloat16 params");
  if (scalars.found_inf != nullptr && *scalars.found_inf != 0.f) return;  // AMP overflow: the step is a no-op

  // The buffers this step writes, in this order: the (positive) momentum, v, the amsgrad maximum.
  constexpr int kWritten = 1 + (kSecond != kNoSecondMoment ? 1 : 0) + (kSecond == kAmsgrad ? 1 : 0);
  __shared__ float values[2][kNumCodes];  // S and U: what a code decodes to, before its scale
  __shared__ float points[kWritten][kPaddedPoints];
  // Copied a word at a time, read by byte. (Not 16 bytes at a time: the copy loop's accesses would be
  // wider than the hot loop's of bfloat16 params, which the static report takes as the hot loop.)
  __shared__ uint32_t buckets[kWritten][kBucketTableBytes / 4];
  // The tile's block maxima (as bits: non-negative floats order as their bits), in kMaxSlots slots
  // that tiles take in turn. Tile t takes its maxima by atomicMax into slot t % 3 before its one
  // barrier, reads them after it, and before it clears slot (t + 1) % 3 for the next tile: that
  // slot's last readers, of tile t - 2, read it before the barrier of tile t - 1, which every
  // thread has passed.
  __shared__ uint32_t block_max[kMaxSlots][kWritten][kTileBlocks];
  for (int k = threadIdx.x; k < 2 * kNumCodes; k += blockDim.x) {
    values[k / kNumCodes][k % kNumCodes] = q.code_books[(k < kNumCodes ? kSignedValues : kUnsignedValues) * kNumCodes + k % kNumCodes];
  }
  for (int k = threadIdx.x; k < kWritten * kPaddedPoints; k += blockDim.x) {
    const int w = k / kPaddedPoints, j = k % kPaddedPoints;
    points[w][j] = padded_point(q.code_books + decision_row(w) * kNumCodes, j);
  }
  for (int k = threadIdx.x; k < kWritten * kBucketTableBytes / 4; k += blockDim.x) {
    (&buckets[0][0])[k] = reinterpret_cast<const uint32_t*>(q.bucket_tables)[k];
  }
  for (int k = threadIdx.x; k < kWritten * kTileBlocks; k += blockDim.x) block_max[0][k / kTileBlocks][k % kTileBlocks] = 0;
  const BlockStart<float> block = block_start<float>(table, h, scalars);  // its barrier publishes the above
  const int ti = block.tensor;
  const ElementCoefs<float> c = block.coefs;

  const int64_t start = static_cast<int64_t>(blockIdx.x - table.first_block[ti]) * kChunkSize;
  const int n = static_cast<int>(min(kChunkSize, table.numel[ti] - start));
  // State list k (0: exp_avgs, then neg_exp_avgs, exp_avg_sqs, max_exp_avg_sqs where used) is
  // table list 2 + k; its scales are list kLists + k.
  const auto codes = [&](int k) { return static_cast<uint8_t*>(table.ptrs[2 + k][ti]) + start; };
  const auto scales = [&](int k) { return static_cast<float*>(table.ptrs[kLists + k][ti]) + (start >> q.block_shift); };
  const int pos = (kPn && !block.odd) ? 1 : 0;  // PN: exp_avgs is "pos" at odd steps
  scalar_t* const p = static_cast<scalar_t*>(table.ptrs[0][ti]) + start;
  const scalar_t* const g = static_cast<const scalar_t*>(table.ptrs[1][ti]) + start;
  // Indexed by written buffer (the first kWritten entries are used).
  uint8_t* const out_codes[kMaxWritten] = {codes(pos), kWritten > 1 ? codes(1 + kPn) : nullptr,
                                           kWritten > 2 ? codes(2 + kPn) : nullptr};
  float* const out_scales[kMaxWritten] = {scales(pos), kWritten > 1 ? scales(1 + kPn) : nullptr,
                                          kWritten > 2 ? scales(2 + kPn) : nullptr};
  const uint8_t* const neg_codes = kPn ? codes(1 - pos) : nullptr;
  const float* const neg_scales = kPn ? scales(1 - pos) : nullptr;

  const BlockNoise<float> nz = block_noise<kNoise, kRound, float>(table, ti, start, block.step, noise, weights);

  bool aligned = is_aligned<scalar_t>(p) && is_aligned<scalar_t>(g);
  for (int k = 0; k < kWritten; ++k) aligned = aligned && is_aligned<uint8_t>(out_codes[k]);
  if (kPn) aligned = aligned && is_aligned<uint8_t>(neg_codes);
  // Rows are aligned when the first is and each is a whole number of packs long.
  if (noise_reads_rows(kNoise)) aligned = aligned && table.numel[ti] % kIlp == 0;

  const int lanes = (1 << q.block_shift) / kIlp;  // threads per quantization block, a power of two
  const int lane = threadIdx.x & (lanes - 1);
  const int tile_block = (threadIdx.x * kIlp) >> q.block_shift;  // this thread's block within a tile
  int slot = 0;
  for (int tile = 0; tile < n; tile += kTile) {  // the same trip count for every thread: a barrier inside
    const int i = tile + threadIdx.x * kIlp;     // this thread's first element
    const bool vector = aligned && i + kIlp <= n;
    const int blk = i >> q.block_shift;  // all kIlp elements are in this block (kIlp divides block_size)
    float x[kWritten][kIlp];             // the new values to encode: m, sqrt(v), sqrt(vmax)
    float magnitude[kWritten] = {};      // their finite maximum over this thread's lanes below n
    if (i < n) {
      // Every global load of the element's state (codes and scales) first, in one round with the
      // params and grads where nothing holds them back; the decodes (shared memory) after.
      uint8_t in_codes[kWritten][kIlp], neg_in[kIlp];
      float in_scales[kWritten], neg_scale = 0.f;
#pragma unroll
      for (int k = 0; k < kWritten; ++k) {
        load_lanes(out_codes[k], i, n, vector, in_codes[k]);
        in_scales[k] = out_scales[k][blk];
      }
      if constexpr (kPn) {
        load_lanes(neg_codes, i, n, vector, neg_in);
        neg_scale = neg_scales[blk];
      }
      Regs<float> r{};
      // As in the float kernels: the params wait for the noise, whose registers they would double.
      if constexpr (kNoise == kNoNoise) load_lanes(p, i, n, vector, r.p);
      const auto load_row = [&](int b, float* out) { load_lanes(g + b * nz.row_stride, i, n, vector, out); };
      form_grads<kNoise, kIlp>(load_row, [&](int j) { return i + j; }, c, nz, r.g);
      if constexpr (kNoise != kNoNoise) load_lanes(p, i, n, vector, r.p);
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        r.m[j] = __fmul_rn(values[0][in_codes[0][j]], in_scales[0]);
        if (kPn) r.mn[j] = __fmul_rn(values[0][neg_in[j]], neg_scale);
        if (kSecond != kNoSecondMoment) {
          const float root = __fmul_rn(values[1][in_codes[1][j]], in_scales[1]);
          r.v[j] = __fmul_rn(root, root);
        }
        if (kSecond == kAmsgrad) {
          const float root = __fmul_rn(values[1][in_codes[2][j]], in_scales[2]);
          r.vm[j] = __fmul_rn(root, root);
        }
      }
      float root[kIlp];  // sqrt_rn of v, or of amsgrad's maximum: what that buffer stores
      update_regs<kPn, kSecond>(c, r, root);

      scalar_t params[kIlp];
      RoundingDraw draws[kIlp];
      consecutive_draws<kRound, kSecond>(nz, i, draws);
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        params[j] = store_value<rounds_params(kRound), kParamStore, scalar_t>(r.p[j], draws[j]);
      }
      store_lanes(p, i, n, vector, params);
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        x[0][j] = r.m[j];
        if (kSecond == kSecondMoment) x[1][j] = root[j];
        if (kSecond == kAmsgrad) {
          x[1][j] = __fsqrt_rn(r.v[j]);
          x[2][j] = root[j];
        }
      }
#pragma unroll
      for (int k = 0; k < kWritten; ++k) {
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
          if (i + j < n) magnitude[k] = max(magnitude[k], finite_magnitude(x[k][j]));
        }
      }
    }
    const int next = slot == kMaxSlots - 1 ? 0 : slot + 1;
#pragma unroll
    for (int k = 0; k < kWritten; ++k) {
      if (lane == 0) block_max[next][k][tile_block] = 0;
      atomicMax(&block_max[slot][k][tile_block], __float_as_uint(magnitude[k]));
    }
    __syncthreads();
    if (i < n) {
#pragma unroll
      for (int k = 0; k < kWritten; ++k) {
        // Every thread of the block read the old scale before the barrier above.
        const float scale = blockwise_bits_float(block_max[slot][k][tile_block]);
        if (lane == 0) out_scales[k][blk] = scale;
        uint8_t encoded[kIlp];
        encode_lanes(SharedCodeRow{points[k], reinterpret_cast<const uint8_t*>(buckets[k])}, scale, x[k], encoded);
        store_lanes(out_codes[k], i, n, vector, encoded);
      }
    }
    slot = next;
  }
}

template <typename scalar_t, bool kPn, int kSecond, int kNoise, int kRound>
void launch_blockwise_step(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const BlockwiseArgs& b,
                           const StepHyper& h, const LaunchNoise& noise, const DeviceScalars& scalars) {
  constexpr int kLists = 3 + (kPn ? 1 : 0) + kSecond;
  constexpr int kStateLists = kLists - 2;
  constexpr bool kOffsets = draws_per_element(kNoise, kRound);
  using Table = BlockwiseTable<kLists, kNoise, kRound>;
  static_assert(sizeof(Table) <= kTableBytes, "the tensor table outgrew its share of the kernel arguments");
  static_assert(sizeof(Table) + sizeof(StepHyper) + sizeof(DeviceScalars) + sizeof(NoiseHyper) + sizeof(float*) +
                        sizeof(BlockwiseHyper) <=
                    kKernelParamBytes,
                "the kernel arguments exceed CUDA's 4 KB parameter limit");
  std::vector<at::TensorList> with_scales(lists);
  const size_t n = l.params.size();
  for (int k = 0; k < kStateLists; ++k) with_scales.push_back(b.scales.slice(k * n, n));
  int32_t shift = 0;
  while ((int64_t{1} << shift) < b.block_size) ++shift;
  const at::Tensor tables = bucket_tables(*b.code_books);
  const BlockwiseHyper q{b.code_books->const_data_ptr<float>(), tables.const_data_ptr<uint8_t>(), shift};
  multi_tensor_apply<2 * kLists - 2, kOffsets>(
      with_scales, l.steps, l.beta1_prods, noise.offsets, [&](const Table& table) {
        const int32_t blocks = table.first_block[table.num_tensors];
        if (blocks > 0) {  // a table of empty tensors only has counters to advance
          launch_kernel(blockwise_step_kernel<scalar_t, kPn, kSecond, kLists, kNoise, kRound>, blocks, kBlockThreads,
                        table, h, scalars, noise.hyper, noise.weights, q);
        }
        constexpr int kCounterThreads = 32 * ((Table::kMaxTensors + 31) / 32);
        launch_kernel(advance_counters_kernel<Table>, 1, kCounterThreads, table, h, scalars.found_inf);
      });
}

template <typename scalar_t, int kRound>
void launch_blockwise(const std::vector<at::TensorList>& lists, const FusedStepLists& l, const BlockwiseArgs& b,
                      const StepHyper& h, const LaunchNoise& noise, const DeviceScalars& scalars) {
  dispatch_variant(l, noise, [&](auto pn, auto second, auto kind) {
    launch_blockwise_step<scalar_t, decltype(pn)::value, decltype(second)::value, decltype(kind)::value, kRound>(
        lists, l, b, h, noise, scalars);
  });
}

}  // namespace cuda
}  // namespace noisefuse
