// row_keep_mask on the GPU: one block per row finds the row's k-th smallest
// rank key (row_select.h: the score's order key and the complement of the
// index, so keys are distinct) by an exact radix select over eight 8-bit
// digits, counting each digit in a shared 256-bin histogram among the
// entries that match the digits found so far; then every entry is kept iff
// its key is above the k-th. The rule is the CPU kernel's, so the masks are
// equal. Why torch-free: so that nvcc can compile-check it without torch's
// CUDA headers (scripts/compile_check_cuda.sh).
#include "row_select_kernel.cuh"

#include "../row_select.h"
#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // the grid strides over rows past this

template <class T>
__global__ void __launch_bounds__(kThreads) row_keep_kernel(RowJob job) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned long long s_prefix;
  __shared__ long long s_rank;
  const T* all = static_cast<const T*>(job.scores);
  for (int64_t r = blockIdx.x; r < job.rows; r += gridDim.x) {
    const T* row = all + r * job.len;
    bool* out = job.keep + r * job.len;
    if (job.k == 0) {
      for (int64_t i = threadIdx.x; i < job.len; i += blockDim.x) out[i] = true;
      continue;
    }
    if (threadIdx.x == 0) {
      s_prefix = 0ull;
      s_rank = job.k;  // 1-based rank still wanted among the matching keys
    }
    __syncthreads();
    for (int shift = 56; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0u;
      __syncthreads();
      const uint64_t prefix = s_prefix;
      const uint64_t high = shift == 56 ? 0ull : (~0ull << (shift + 8));
      for (int64_t i = threadIdx.x; i < job.len; i += blockDim.x) {
        const uint64_t key = rows::rank_key(widen(row[i]), i);
        if ((key & high) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        long long rank = s_rank;
        int d = 0;
        for (; d < 255 && rank > static_cast<long long>(hist[d]); ++d) rank -= hist[d];
        s_prefix = prefix | (static_cast<uint64_t>(d) << shift);
        s_rank = rank;
      }
      __syncthreads();
    }
    const uint64_t kth = s_prefix;  // the largest dropped key
    for (int64_t i = threadIdx.x; i < job.len; i += blockDim.x) {
      out[i] = rows::rank_key(widen(row[i]), i) > kth;
    }
    __syncthreads();  // the next row resets the shared state
  }
}

}  // namespace

cudaError_t launch_row_keep_mask(const RowJob& job, cudaStream_t stream) {
  if (job.rows == 0 || job.len == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(job.rows < kMaxBlocks ? job.rows : kMaxBlocks));
  switch (job.dtype) {
    case DType::F32: row_keep_kernel<float><<<grid, kThreads, 0, stream>>>(job); break;
    case DType::BF16: row_keep_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(job); break;
    default: row_keep_kernel<__half><<<grid, kThreads, 0, stream>>>(job); break;
  }
  return cudaGetLastError();
}

}  // namespace mgpp_ext::cuda_kernels
