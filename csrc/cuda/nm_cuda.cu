// CUDA binding of the N:M ops: the argument checks and layouts shared with
// the CPU kernel (nm_layout.h), the walk structs, and registration with the
// dispatcher. The kernel is in the torch-free nm_kernel.cu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../nm_layout.h"
#include "binding_dtype.h"
#include "nm_kernel.cuh"

namespace mgpp_ext {
namespace {

namespace ck = cuda_kernels;

using cuda_bindings::kernel_dtype;

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cuda(), op, ": '", name, "' must be a CUDA tensor, got ",
                    t.device());
}

void run_walks(const std::vector<nm::Walk>& walks, int64_t n, int64_t m, const char* op) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  for (const nm::Walk& w : walks) {
    ck::NmWalk kw{};
    if (w.x.work.defined()) {
      kw.x = w.x.work.data_ptr();
      kw.x_dtype = kernel_dtype(w.x.work.scalar_type());
    }
    if (w.s.defined()) {
      kw.s = w.s.const_data_ptr();
      kw.s_dtype = kernel_dtype(w.s.scalar_type());
    }
    kw.mask = w.mask.work.defined() ? w.mask.work.data_ptr<bool>() : nullptr;
    kw.outer = w.layout.outer;
    kw.size = w.layout.size;
    kw.inner = w.layout.inner;
    const cudaError_t err = ck::launch_nm(kw, static_cast<int>(n), static_cast<int>(m), stream);
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  }
}

at::Tensor nm_mask_cuda(const at::Tensor& scores, int64_t n, int64_t m, int64_t dim) {
  const char* op = "nm_mask";
  nm::check_pattern(n, m, op);
  nm::check_float(scores, op, "scores");
  check_cuda(scores, op, "scores");
  const int64_t d = nm::check_group_dim(scores, dim, m, op, "scores");
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor out = at::empty_like(scores, scores.options().dtype(at::kBool));
  if (scores.numel() == 0) return out;
  std::vector<nm::Walk> walks;
  walks.push_back(nm::mask_walk(scores, out, d));
  run_walks(walks, n, m, op);
  walks[0].mask.write_back();
  return out;
}

void nm_prune_cuda(at::TensorList tensors, at::TensorList scores, int64_t n, int64_t m,
                   at::IntArrayRef dims, at::TensorList masks) {
  const char* op = "nm_prune_";
  const std::vector<int64_t> d = nm::check_prune_args(tensors, scores, n, m, dims, masks, op);
  if (tensors.empty()) return;
  check_cuda(tensors[0], op, "tensors[0]");
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  std::vector<nm::Walk> walks = nm::prune_walks(tensors, scores, d, masks);
  run_walks(walks, n, m, op);
  for (auto& w : walks) {
    w.x.write_back();
    w.mask.write_back();
  }
}

}  // namespace
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CUDA, m) {
  m.impl("nm_mask", &mgpp_ext::nm_mask_cuda);
  m.impl("nm_prune_", &mgpp_ext::nm_prune_cuda);
}
