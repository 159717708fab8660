// The N:M kernel: one thread per group reads the group's m scores, turns
// them into order keys, decides the keep mask (nm_select.h, the same code
// as the CPU's rule) and writes the zeros and the mask.
//
// Why one thread per group: m <= 32 keys and their counts fit in registers
// when m is a compile-time constant (2, 4, 8, 16, 32; other m take the
// run-time loop). With a strided layout (inner > 1) neighbouring threads
// take neighbouring groups, so every load of a warp is coalesced; with
// contiguous groups a warp reads m * 32 consecutive elements over its m
// loads, which the L1 cache merges.
// Why torch-free: so that nvcc can compile-check it without torch's CUDA
// headers (scripts/compile_check_cuda.sh).
#include "nm_kernel.cuh"

#include "../nm_select.h"
#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {
namespace {

constexpr int kNmThreads = 256;
constexpr int64_t kNmMaxBlocks = int64_t(1) << 20;  // the grid strides past this

template <int M, class T, bool kAbs>
__device__ __forceinline__ void load_keys(const void* p, int64_t base, int64_t stride, int m,
                                          int32_t* k) {
  const T* s = static_cast<const T*>(p) + base;
  const int count = M > 0 ? M : m;
#pragma unroll
  for (int r = 0; r < count; ++r) {
    const float f = widen(s[r * stride]);
    k[r] = kAbs ? nm::abs_key(f) : nm::score_key(f);
  }
}

template <int M>
__device__ __forceinline__ void keys_of(const NmWalk& w, int64_t base, int m, int32_t* k) {
  const int64_t st = w.inner;
  if (w.s == nullptr) {  // |x|
    switch (w.x_dtype) {
      case DType::F32: load_keys<M, float, true>(w.x, base, st, m, k); break;
      case DType::BF16: load_keys<M, __nv_bfloat16, true>(w.x, base, st, m, k); break;
      default: load_keys<M, __half, true>(w.x, base, st, m, k); break;
    }
  } else {
    switch (w.s_dtype) {
      case DType::F32: load_keys<M, float, false>(w.s, base, st, m, k); break;
      case DType::BF16: load_keys<M, __nv_bfloat16, false>(w.s, base, st, m, k); break;
      default: load_keys<M, __half, false>(w.s, base, st, m, k); break;
    }
  }
}

// Dropped entries become +0.0 (all bits clear); kept entries are not written.
template <int M, class U>
__device__ __forceinline__ void zero_dropped(void* p, int64_t base, int64_t stride, int m,
                                             uint32_t keep) {
  U* x = static_cast<U*>(p) + base;
  const int count = M > 0 ? M : m;
#pragma unroll
  for (int r = 0; r < count; ++r) {
    if (((keep >> r) & 1u) == 0u) x[r * stride] = U(0);
  }
}

template <int M>
__global__ void __launch_bounds__(kNmThreads)
    nm_kernel(NmWalk w, int n, int m_rt, int64_t num_groups) {
  const int m = M > 0 ? M : m_rt;
  constexpr int kKeys = M > 0 ? M : nm::kMaxM;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < num_groups;
       t += int64_t(gridDim.x) * blockDim.x) {
    // Thread t: group column q of row block t / inner (row block = one
    // group index of one outer index).
    const int64_t q = w.inner == 1 ? 0 : t % w.inner;
    const int64_t row_block = w.inner == 1 ? t : t / w.inner;
    const int64_t base = row_block * m * w.inner + q;
    int32_t k[kKeys];
    keys_of<M>(w, base, m, k);
    uint32_t keep;
    if constexpr (M > 0) {
      keep = nm::keep_mask<M>(k, n);
    } else {
      keep = nm::keep_mask(k, m, n);
    }
    if (w.x != nullptr) {
      if (w.x_dtype == DType::F32) {
        zero_dropped<M, uint32_t>(w.x, base, w.inner, m, keep);
      } else {
        zero_dropped<M, uint16_t>(w.x, base, w.inner, m, keep);
      }
    }
    if (w.mask != nullptr) {
      bool* out = w.mask + base;
#pragma unroll
      for (int r = 0; r < (M > 0 ? M : m); ++r) out[r * w.inner] = ((keep >> r) & 1u) != 0u;
    }
  }
}

}  // namespace

cudaError_t launch_nm(const NmWalk& walk, int n, int m, cudaStream_t stream) {
  const int64_t num_groups = walk.outer * (walk.size / m) * walk.inner;
  if (num_groups == 0) return cudaSuccess;
  int64_t blocks = (num_groups + kNmThreads - 1) / kNmThreads;
  if (blocks > kNmMaxBlocks) blocks = kNmMaxBlocks;
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (m) {
    case 2: nm_kernel<2><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
    case 4: nm_kernel<4><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
    case 8: nm_kernel<8><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
    case 16: nm_kernel<16><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
    case 32: nm_kernel<32><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
    default: nm_kernel<0><<<grid, kNmThreads, 0, stream>>>(walk, n, m, num_groups); break;
  }
  return cudaGetLastError();
}

}  // namespace mgpp_ext::cuda_kernels
