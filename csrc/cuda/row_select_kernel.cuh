// Launcher of the per-row exact selection (row_keep_mask; the rule is in
// csrc/row_select.h).
//
// Why a torch-free header: the kernel compiles with plain nvcc (no torch
// CUDA headers needed); row_cuda.cu, the binding, fills this plain struct.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {

// rows x len contiguous scores; keep receives rows x len bools.
struct RowJob {
  const void* scores;
  DType dtype;
  bool* keep;
  int64_t rows;
  int64_t len;
  int64_t k;  // entries dropped per row, 0 <= k <= len
};

// One block per row: an exact radix select of the k-th smallest 64-bit rank
// key, eight 8-bit digits, then the mask.
cudaError_t launch_row_keep_mask(const RowJob& job, cudaStream_t stream);

}  // namespace mgpp_ext::cuda_kernels
