// CUDA binding of the ADMM, SR-STE and movement ops: the argument checks shared with
// the CPU kernels (regulariser_checks.h), contiguous working copies, the
// kernel structs, and registration with the dispatcher. The kernels are in
// the torch-free regulariser_kernel.cu.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../memory_checks.h"
#include "../regulariser_checks.h"
#include "../score_checks.h"
#include "../step_checks.h"
#include "binding_dtype.h"
#include "regulariser_kernel.cuh"

namespace mgpp_ext {
namespace {

namespace ck = cuda_kernels;

using cuda_bindings::kernel_dtype;

// A tensor the kernel writes: itself when contiguous, else a contiguous
// copy that write_back() copies in.
struct Work {
  at::Tensor original;
  at::Tensor work;
  explicit Work(const at::Tensor& t) : original(t), work(t.contiguous()) {}
  void write_back() {
    if (!work.is_same(original)) original.copy_(work);
  }
};

std::vector<Work> working(at::TensorList ts) {
  std::vector<Work> out;
  for (const auto& t : ts) out.emplace_back(t);
  return out;
}

void write_back(std::vector<Work>& ts) {
  for (auto& t : ts) t.write_back();
}

void check_cuda_list(at::TensorList ts, const at::Device& device, const char* op,
                     const char* name) {
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK_VALUE(ts[i].device() == device, op, ": '", reg::entry(name, i),
                      "' must be on ", device, ", got ", ts[i].device());
  }
}

void check_float_list(at::TensorList ts, const char* op, const char* name) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto st = ts[i].scalar_type();
    TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op, ": '",
                     reg::entry(name, i), "' must be float32, bfloat16 or float16, got ", st);
  }
}

// The AdamW lists: equal lengths, one param/grad dtype, moments of that
// dtype or fp32, equal shapes, all on params[0]'s CUDA device. The CPU
// kernels check the same (adamw_body.h).
at::Device check_adamw_lists(at::TensorList params, at::TensorList grads,
                             at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                             const char* op) {
  const size_t np = params.size();
  TORCH_CHECK_VALUE(grads.size() == np && exp_avgs.size() == np && exp_avg_sqs.size() == np, op,
                    ": 'params', 'grads', 'exp_avgs' and 'exp_avg_sqs' must have the same "
                    "length, got ", np, ", ", grads.size(), ", ", exp_avgs.size(), ", ",
                    exp_avg_sqs.size());
  if (np == 0) return at::Device(at::kCUDA);  // nothing to run; the caller returns after its checks
  const at::Device device = params[0].device();
  TORCH_CHECK_VALUE(device.is_cuda(), op, ": 'params[0]' must be a CUDA tensor, got ", device);
  check_float_list(params, op, "params");
  check_float_list(exp_avgs, op, "exp_avgs");
  check_cuda_list(params, device, op, "params");
  check_cuda_list(grads, device, op, "grads");
  check_cuda_list(exp_avgs, device, op, "exp_avgs");
  check_cuda_list(exp_avg_sqs, device, op, "exp_avg_sqs");
  const auto pt = params[0].scalar_type();
  const auto st = exp_avgs[0].scalar_type();
  TORCH_CHECK_TYPE(st == pt || st == at::kFloat, op,
                   ": 'exp_avgs' must have the params' dtype or float32, got ", st,
                   " for params of ", pt);
  for (size_t i = 0; i < np; ++i) {
    TORCH_CHECK_TYPE(params[i].scalar_type() == pt && grads[i].scalar_type() == pt, op,
                     ": all 'params' and 'grads' must share one dtype (", pt, "); entry ", i,
                     " has ", params[i].scalar_type(), " and ", grads[i].scalar_type());
    TORCH_CHECK_TYPE(exp_avgs[i].scalar_type() == st && exp_avg_sqs[i].scalar_type() == st, op,
                     ": all 'exp_avgs' and 'exp_avg_sqs' must share one dtype (", st,
                     "); entry ", i, " differs");
    const auto& shape = params[i].sizes();
    TORCH_CHECK_VALUE(grads[i].sizes() == shape && exp_avgs[i].sizes() == shape &&
                          exp_avg_sqs[i].sizes() == shape,
                      op, ": entry ", i, " has mismatched shapes: param ", shape, ", grad ",
                      grads[i].sizes(), ", exp_avg ", exp_avgs[i].sizes(), ", exp_avg_sq ",
                      exp_avg_sqs[i].sizes());
  }
  return device;
}

ck::StepScalars adamw_scalars(double lr, double beta1, double beta2, double eps,
                              double weight_decay, int64_t step, const bool* gate) {
  ck::StepHyper hp{};
  hp.lr = lr;
  hp.beta1 = beta1;
  hp.beta2 = beta2;
  hp.eps = eps;
  hp.weight_decay = weight_decay;
  hp.step = step;
  hp.apply_prior = false;
  hp.hist_lo = 0;
  hp.hist_hi = 65535;
  hp.apply_if = gate;
  return ck::make_step_scalars(hp);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

void admm_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList duals, at::TensorList dual_masks,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    int64_t step, double rho, const std::optional<at::Tensor>& apply_if) {
  const char* op = "admm_step_";
  const at::Device device = check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  reg::check_duals(params, duals, dual_masks, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  reg::check_rho(rho, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"duals", duals, false},
                       {"dual_masks", dual_masks, false}, {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  const bool* gate = check_apply_if(apply_if, device, op) ? apply_if->data_ptr<bool>() : nullptr;
  const ck::StepScalars sc = adamw_scalars(lr, beta1, beta2, eps, weight_decay, step, gate);
  auto p = working(params), m = working(exp_avgs), v = working(exp_avg_sqs);
  const auto pt = kernel_dtype(params[0].scalar_type()), st = kernel_dtype(exp_avgs[0].scalar_type());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor g = grads[i].contiguous(), a = duals[i].contiguous();
    ck::RegTensor t;
    t.numel = params[i].numel();
    t.param = p[i].work.data_ptr();
    t.grad = g.const_data_ptr();
    t.exp_avg = m[i].work.data_ptr();
    t.exp_avg_sq = v[i].work.data_ptr();
    t.dual = const_cast<float*>(a.const_data_ptr<float>());  // read only here
    t.dual_mask = const_cast<uint8_t*>(dual_masks[i].const_data_ptr<uint8_t>());
    check_launch(ck::launch_admm_step(t, pt, st, sc, static_cast<float>(rho), current_stream()), op);
  }
  write_back(p);
  write_back(m);
  write_back(v);
}

// The projections' checks; returns the params' device.
at::Device check_project(at::TensorList params, at::TensorList duals, at::TensorList dual_masks,
                         const char* op) {
  reg::check_duals(params, duals, dual_masks, op);
  check_float_list(params, op, "params");
  if (params.empty()) return at::Device(at::kCUDA);  // nothing to run; the caller returns
  const at::Device device = params[0].device();
  TORCH_CHECK_VALUE(device.is_cuda(), op, ": 'params[0]' must be a CUDA tensor, got ", device);
  check_cuda_list(params, device, op, "params");
  return device;
}

void admm_combine_cuda(at::TensorList params, at::TensorList duals, at::TensorList dual_masks) {
  const char* op = "admm_combine_";
  const at::Device device = check_project(params, duals, dual_masks, op);
  mem::check_disjoint({{"params", params, false}, {"duals", duals, true}, {"dual_masks", dual_masks, false}},
                      op);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  auto a = working(duals);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor w = params[i].contiguous();
    ck::RegTensor t;
    t.numel = w.numel();
    t.param = const_cast<void*>(w.const_data_ptr());  // read only here
    t.dual = a[i].work.data_ptr<float>();
    t.dual_mask = dual_masks[i].data_ptr<uint8_t>();
    check_launch(ck::launch_admm_combine(t, kernel_dtype(w.scalar_type()), current_stream()), op);
  }
  write_back(a);
}

void admm_project_cuda(at::TensorList params, at::TensorList duals, at::TensorList dual_masks,
                       int64_t n, int64_t m, at::IntArrayRef dims) {
  const char* op = "admm_project_";
  nm::check_pattern(n, m, op);
  const at::Device device = check_project(params, duals, dual_masks, op);
  TORCH_CHECK_VALUE(dims.size() == params.size(), op, ": 'dims' must have one dim per param (",
                    params.size(), "), got ", dims.size());
  std::vector<int64_t> d;
  for (size_t i = 0; i < params.size(); ++i) {
    d.push_back(nm::check_group_dim(params[i], dims[i], m, op, reg::entry("params", i)));
  }
  mem::check_disjoint({{"params", params, false}, {"duals", duals, true}, {"dual_masks", dual_masks, true}},
                      op);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  auto a = working(duals);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor w = params[i].contiguous();
    const nm::GroupLayout L = reg::row_major_layout(w.sizes(), d[i]);
    ck::RegTensor t;
    t.numel = w.numel();
    t.param = const_cast<void*>(w.const_data_ptr());  // read only here
    t.dual = a[i].work.data_ptr<float>();
    t.dual_mask = dual_masks[i].data_ptr<uint8_t>();
    t.outer = L.outer;
    t.size = L.size;
    t.inner = L.inner;
    check_launch(ck::launch_admm_project(t, kernel_dtype(w.scalar_type()), static_cast<int>(n),
                                         static_cast<int>(m), current_stream()),
                 op);
  }
  write_back(a);
}

void admm_threshold_mask_cuda(at::TensorList duals, const at::Tensor& select_state,
                              at::TensorList dual_masks) {
  const char* op = "admm_threshold_mask_";
  // The CPU op's check (cpu_utils.h check_select_state): same condition, same error.
  TORCH_CHECK(select_state.scalar_type() == at::kLong && select_state.dim() == 1 &&
                  select_state.numel() == 4 && select_state.is_contiguous(),
              op, ": 'select_state' must be a contiguous int64 tensor of 4 elements, got ",
              select_state.scalar_type(), " of shape ", select_state.sizes());
  reg::check_duals(duals, duals, dual_masks, op);
  mem::check_disjoint({{"duals", duals, false}, {"select_state", select_state, false},
                       {"dual_masks", dual_masks, true}},
                      op);
  if (duals.empty()) return;
  const at::Device device = select_state.device();
  TORCH_CHECK_VALUE(device.is_cuda(), op, ": 'select_state' must be a CUDA tensor, got ", device);
  check_cuda_list(duals, device, op, "duals");
  const c10::cuda::CUDAGuard guard(device);
  for (size_t i = 0; i < duals.size(); ++i) {
    const at::Tensor a = duals[i].contiguous();
    ck::RegTensor t;
    t.numel = a.numel();
    t.dual = const_cast<float*>(a.const_data_ptr<float>());  // read only here
    t.dual_mask = dual_masks[i].data_ptr<uint8_t>();
    check_launch(ck::launch_admm_threshold_mask(t, select_state.const_data_ptr<int64_t>(),
                                                current_stream()),
                 op);
  }
}

void srste_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList dense,
                     at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList masks,
                     double lr, double beta1, double beta2, double eps, double weight_decay,
                     int64_t step, double lambda_w, int64_t n, int64_t m, at::IntArrayRef dims,
                     bool update_mask, const std::optional<at::Tensor>& apply_if) {
  const char* op = "srste_step_";
  const at::Device device = check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  const std::vector<int64_t> d = reg::check_srste(params, dense, masks, n, m, dims, lambda_w, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"dense", dense, true},
                       {"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true}, {"masks", masks, true},
                       {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  const bool* gate = check_apply_if(apply_if, device, op) ? apply_if->data_ptr<bool>() : nullptr;
  const ck::StepScalars sc = adamw_scalars(lr, beta1, beta2, eps, weight_decay, step, gate);
  auto p = working(params), w = working(dense), mo = working(exp_avgs), v = working(exp_avg_sqs),
       k = working(masks);
  const auto pt = kernel_dtype(params[0].scalar_type()), st = kernel_dtype(exp_avgs[0].scalar_type());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor g = grads[i].contiguous();
    const nm::GroupLayout L = reg::row_major_layout(params[i].sizes(), d[i]);
    ck::RegTensor t;
    t.numel = params[i].numel();
    t.param = p[i].work.data_ptr();
    t.grad = g.const_data_ptr();
    t.exp_avg = mo[i].work.data_ptr();
    t.exp_avg_sq = v[i].work.data_ptr();
    t.dense = w[i].work.data_ptr();
    t.mask = k[i].work.data_ptr<bool>();
    t.outer = L.outer;
    t.size = L.size;
    t.inner = L.inner;
    check_launch(ck::launch_srste_step(t, pt, st, sc, static_cast<float>(lambda_w),
                                       static_cast<int>(n), static_cast<int>(m), update_mask,
                                       current_stream()),
                 op);
  }
  write_back(p);
  write_back(w);
  write_back(mo);
  write_back(v);
  write_back(k);
}

}  // namespace
}  // namespace mgpp_ext

namespace mgpp_ext {
namespace {

void movement_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList scores, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t step,
                        double score_lr, const std::optional<at::Tensor>& apply_if) {
  const char* op = "movement_step_";
  const at::Device device = check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  score::check_scores(params, scores, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  score::check_score_lr(score_lr, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"scores", scores, true},
                       {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(device);
  const bool* gate = check_apply_if(apply_if, device, op) ? apply_if->data_ptr<bool>() : nullptr;
  const ck::StepScalars sc = adamw_scalars(lr, beta1, beta2, eps, weight_decay, step, gate);
  auto p = working(params), m = working(exp_avgs), v = working(exp_avg_sqs), sw = working(scores);
  const auto pt = kernel_dtype(params[0].scalar_type()), st = kernel_dtype(exp_avgs[0].scalar_type());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor g = grads[i].contiguous();
    ck::RegTensor t;
    t.numel = params[i].numel();
    t.param = p[i].work.data_ptr();
    t.grad = g.const_data_ptr();
    t.exp_avg = m[i].work.data_ptr();
    t.exp_avg_sq = v[i].work.data_ptr();
    t.score = sw[i].work.data_ptr<float>();
    check_launch(ck::launch_movement_step(t, pt, st, sc, static_cast<float>(score_lr), current_stream()),
                 op);
  }
  write_back(p);
  write_back(m);
  write_back(v);
  write_back(sw);
}

}  // namespace
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CUDA, m) {
  m.impl("movement_step_", &mgpp_ext::movement_step_cuda);
  m.impl("admm_step_", &mgpp_ext::admm_step_cuda);
  m.impl("admm_combine_", &mgpp_ext::admm_combine_cuda);
  m.impl("admm_project_", &mgpp_ext::admm_project_cuda);
  m.impl("admm_threshold_mask_", &mgpp_ext::admm_threshold_mask_cuda);
  m.impl("srste_step_", &mgpp_ext::srste_step_cuda);
}
