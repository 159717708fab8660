// The kernels' dtype tag of a torch dtype, for the CUDA bindings (the
// callers have checked that it is float32, bfloat16 or float16).
#pragma once

#include <ATen/ATen.h>

#include "dtype.cuh"

namespace mgpp_ext::cuda_bindings {

inline cuda_kernels::DType kernel_dtype(at::ScalarType st) {
  return st == at::kFloat      ? cuda_kernels::DType::F32
         : st == at::kBFloat16 ? cuda_kernels::DType::BF16
                               : cuda_kernels::DType::F16;
}

}  // namespace mgpp_ext::cuda_bindings
