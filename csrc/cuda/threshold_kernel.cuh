// Launchers of the global-threshold kernels: the two-level radix select on
// |x| bit patterns (abs_histogram, select_bin) and the ops that apply its
// result (apply_threshold, apply_mask). Layout of select_state: see
// csrc/ops.cpp.
//
// Why a torch-free header: the kernels compile with plain nvcc (no torch
// CUDA headers needed); mgpp_cuda.cu, the only file that sees torch, fills
// these plain structs. select_state stays on the device throughout: every
// kernel reads it there, so a whole selection runs without a host round trip.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {

// Host arrays of num_tensors entries: device pointer, size and dtype of each
// tensor (a list may mix dtypes; each dtype gets its own launches).
struct TensorTable {
  int64_t num_tensors;
  void* const* data;
  const int64_t* numels;
  const DType* dtypes;
};

// hist (device int64[65536]) += histogram of |x| over all tensors. level 0:
// bin = high 16 bits of |x|; level 1: bin = low 16 bits, only for elements
// whose high 16 bits equal select_state[1].
cudaError_t launch_abs_histogram(const TensorTable& tensors,
                                 const int64_t* select_state, int64_t* hist,
                                 int level, cudaStream_t stream);

// One block scans hist for the bin holding the select_state[0]-th smallest
// element and narrows select_state (level 0: [0], [1], [3]; level 1: [2]).
// A rank outside [1, total] cannot raise here: it selects bin 0 (k <= 0) or
// the last bin (k > total).
cudaError_t launch_select_bin(const int64_t* hist, int64_t* select_state,
                              int level, cudaStream_t stream);

// x = 0 where bits(|x|) <= select_state[2]; masks_or_null[i] (bool, numels[i]
// elements) receives bits(|x|) > select_state[2] for every element.
cudaError_t launch_apply_threshold(const TensorTable& tensors,
                                   const int64_t* select_state,
                                   bool* const* masks_or_null,
                                   cudaStream_t stream);

// x = mask ? x : 0.
cudaError_t launch_apply_mask(const TensorTable& tensors,
                              const bool* const* masks, cudaStream_t stream);

}  // namespace mgpp_ext::cuda_kernels
