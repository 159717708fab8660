// Block-private histogram of 16-bit keys, added into a global int64
// histogram of 65536 bins (the radix select's level 0 or level 1).
//
// Why this scheme: global atomics straight into the int64 histogram would
// serialise on the few hundred bins real weights fall into, and 65536
// 32-bit counters (256 KB) do not fit in a block's shared memory (227 KB at
// most on H100). So a block counts its chunk in 16-bit shared counters, two
// per 32-bit word, and at the end adds every non-zero counter to the global
// histogram with one 64-bit atomic. Level-0 keys are the high 16 bits of
// |x| with the sign cleared, so they are < 32768 and need only 64 KB
// (three blocks per SM on H100); level-1 keys use all 65536 (128 KB).
//
// Overflow: a block accumulates exactly one chunk (<= 65536 elements)
// between flushes, so a counter could only wrap if all 65536 elements of a
// full chunk shared one key. The chunk's last element (index 65535) is
// therefore always added straight to the global histogram: every shared
// counter then stays <= 65535 and never carries into its neighbour.
//
// Key 0 (exact zeros, i.e. pruned weights, and every bf16 value at level 1)
// dominates after pruning; it is counted in a register per thread and
// reduced once per block, so those elements never queue on one shared
// address.
//
// Where a device cannot give a block the shared memory (e.g. sm_86/sm_89
// offer ~99 KB), HistMode::kGlobal adds to the global histogram directly:
// exact, just slower.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "multi_tensor.cuh"

namespace mgpp_ext::cuda_kernels {

enum class HistMode : int { kNone = 0, kShared = 1, kGlobal = 2 };

constexpr int kHistBins = 65536;   // bins of the global histogram
constexpr int kLevel0Keys = 32768;  // level-0 keys: sign bit cleared

constexpr size_t shared_hist_bytes(int keys) {
  return size_t(keys) * sizeof(uint16_t);
}

__device__ __forceinline__ uint32_t* dynamic_shared_words() {
  extern __shared__ uint4 mgpp_dynamic_smem[];
  return reinterpret_cast<uint32_t*>(mgpp_dynamic_smem);
}

// kKeys: keys are < kKeys (32768 or 65536); sizes the shared counters.
template <HistMode M, int kKeys>
class BlockHist {
  static_assert(kKeys % 8 == 0 && kKeys <= kHistBins, "bad key range");
  static constexpr int kWords = kKeys / 2;

 public:
  // Every thread of the block must construct it (it synchronises).
  __device__ explicit BlockHist(int64_t* global)
      : global_(reinterpret_cast<unsigned long long*>(global)) {
    if constexpr (M == HistMode::kShared) {
      uint4* w = reinterpret_cast<uint4*>(dynamic_shared_words());
      for (int i = threadIdx.x; i < kWords / 4; i += blockDim.x) {
        w[i] = make_uint4(0u, 0u, 0u, 0u);
      }
      __syncthreads();
    }
  }

  // index: the element's index within its chunk.
  __device__ __forceinline__ void add(uint32_t key, int index) {
    if constexpr (M != HistMode::kNone) {
      if (key == 0) {
        ++zeros_;
      } else if (M == HistMode::kShared && index != kChunkSize - 1) {
        atomicAdd(dynamic_shared_words() + (key >> 1), 1u << ((key & 1u) * 16));
      } else {
        atomicAdd(global_ + key, 1ull);
      }
    }
  }

  // Adds the block's counts to the global histogram. Every thread of the
  // block must call it (it synchronises).
  __device__ void flush() {
    if constexpr (M != HistMode::kNone) {
      __shared__ unsigned int block_zeros;
      if (threadIdx.x == 0) block_zeros = 0;
      unsigned int z = zeros_;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        z += __shfl_down_sync(0xffffffffu, z, off);
      }
      __syncthreads();  // block_zeros is 0, all shared adds are done
      if ((threadIdx.x & 31) == 0 && z != 0) atomicAdd(&block_zeros, z);
      __syncthreads();
      if (threadIdx.x == 0 && block_zeros != 0) {
        atomicAdd(global_, static_cast<unsigned long long>(block_zeros));
      }
      if constexpr (M == HistMode::kShared) {
        const uint4* w = reinterpret_cast<const uint4*>(dynamic_shared_words());
        for (int i = threadIdx.x; i < kWords / 4; i += blockDim.x) {
          const uint4 q = w[i];
          add_word(4 * i + 0, q.x);
          add_word(4 * i + 1, q.y);
          add_word(4 * i + 2, q.z);
          add_word(4 * i + 3, q.w);
        }
      }
    }
  }

 private:
  __device__ __forceinline__ void add_word(int word, uint32_t counts) {
    if (counts & 0xffffu) {
      atomicAdd(global_ + 2 * word, static_cast<unsigned long long>(counts & 0xffffu));
    }
    if (counts >> 16) {
      atomicAdd(global_ + 2 * word + 1, static_cast<unsigned long long>(counts >> 16));
    }
  }

  unsigned long long* global_;
  unsigned int zeros_ = 0;
};

struct HistLaunchConfig {
  HistMode mode;       // kShared or kGlobal
  size_t smem_bytes;   // dynamic shared memory per block
  int max_blocks;      // table rows per launch
};

// How a histogram-producing kernel runs on the current device.
// shared_kernel: its kShared instantiation; keys: its key range. At one or
// a few resident blocks per SM a partial last wave leaves SMs idle, so the
// blocks per launch are rounded down to whole waves.
template <class Kernel>
cudaError_t hist_launch_config(Kernel shared_kernel, int keys,
                               HistLaunchConfig* cfg) {
  cfg->mode = HistMode::kGlobal;
  cfg->smem_bytes = 0;
  cfg->max_blocks = kMaxBlocksPerLaunch;
  const size_t bytes = shared_hist_bytes(keys);
  int dev = 0;
  int optin = 0;
  int sms = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  cudaFuncAttributes attr;
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&attr, shared_kernel);
  if (err != cudaSuccess) return err;
  if (attr.sharedSizeBytes + bytes > size_t(optin)) return cudaSuccess;
  err = cudaFuncSetAttribute(shared_kernel,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(bytes));
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, shared_kernel,
                                                      kBlockSize, bytes);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) return cudaSuccess;
  cfg->mode = HistMode::kShared;
  cfg->smem_bytes = bytes;
  const int resident = per_sm * sms;
  if (resident >= 1 && resident <= kMaxBlocksPerLaunch) {
    cfg->max_blocks = kMaxBlocksPerLaunch / resident * resident;
  }
  return cudaSuccess;
}

}  // namespace mgpp_ext::cuda_kernels
