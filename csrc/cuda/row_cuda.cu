// CUDA binding of row_keep_mask: the checks shared with the CPU kernel
// (row_checks.h), the job struct, and registration with the dispatcher.
// The kernel is in the torch-free row_select_kernel.cu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../row_checks.h"
#include "row_select_kernel.cuh"

namespace mgpp_ext {
namespace {

namespace ck = cuda_kernels;

at::Tensor row_keep_mask_cuda(const at::Tensor& scores, int64_t k) {
  const char* op = "row_keep_mask";
  const int64_t len = rows::check_row_args(scores, k, op);
  TORCH_CHECK_VALUE(scores.device().is_cuda(), op, ": 'scores' must be a CUDA tensor, got ",
                    scores.device());
  const c10::cuda::CUDAGuard guard(scores.device());
  const at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(at::kBool));
  if (s.numel() == 0) return out;
  ck::RowJob job{};
  job.scores = s.const_data_ptr();
  job.dtype = s.scalar_type() == at::kFloat      ? ck::DType::F32
              : s.scalar_type() == at::kBFloat16 ? ck::DType::BF16
                                                 : ck::DType::F16;
  job.keep = out.data_ptr<bool>();
  job.rows = s.numel() / len;
  job.len = len;
  job.k = k;
  const cudaError_t err =
      ck::launch_row_keep_mask(job, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CUDA, m) {
  m.impl("row_keep_mask", &mgpp_ext::row_keep_mask_cuda);
}
