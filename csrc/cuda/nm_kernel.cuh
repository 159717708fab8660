// Launcher of the N:M kernel: keep masks and in-place pruning (the rule is
// in csrc/nm_select.h, the layout in csrc/nm_layout.h).
//
// Why a torch-free header: the kernel compiles with plain nvcc (no torch
// CUDA headers needed); nm_cuda.cu, the binding, fills this plain struct.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {

// One tensor as the kernel walks it: element (o, d, q) of the memory-order
// view [outer, size, inner] lies at (o * size + d) * inner + q, and a group
// is m entries d = g * m .. g * m + m - 1 of one (o, q).
struct NmWalk {
  void* x;          // zeroed where dropped, in place; null: no weights (nm_mask)
  DType x_dtype;
  const void* s;    // scores; null: |x|
  DType s_dtype;
  bool* mask;       // receives the keep mask; may be null
  int64_t outer;
  int64_t size;     // a multiple of m
  int64_t inner;
};

// One thread per group. 1 <= n < m <= 32 (checked by the binding).
cudaError_t launch_nm(const NmWalk& walk, int n, int m, cudaStream_t stream);

}  // namespace mgpp_ext::cuda_kernels
