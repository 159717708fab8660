// CUDA kernels of the mgpp_ext ops: argument checks, pointer tables, and
// registration with the dispatcher (TORCH_LIBRARY_IMPL(mgpp_ext, CUDA)).
//
// Why this file is thin: it is the only CUDA file that includes torch. The
// kernels live in the torch-free *_kernel.cu files (raw pointers in), so
// that nvcc can compile-check them on a machine whose torch has no CUDA;
// this file is built only where torch has CUDA (setup.py).
//
// Layout: the kernels walk memory linearly, so every tensor an op pairs
// elementwise must lay its elements out like the tensor it updates, which
// must be dense and non-overlapping (any memory order: a transposed weight
// is used as it lies). Whatever does not fit (a sliced weight, a grad or
// mask in another layout) goes through a work copy in the needed layout
// that is copied back afterwards if written, as the CPU kernels do. That is
// the only copying, and optimizer tensors never need it.
// Signatures use const at::Tensor& and at::TensorList exactly as the CPU
// kernels do: the dispatcher's typed calls (csrc/threshold.cpp) require
// every backend to register the same C++ signature.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../memory_checks.h"
#include "../step_checks.h"
#include "../threshold.h"
#include "hist_block.cuh"
#include "mgpp_step_kernel.cuh"
#include "threshold_kernel.cuh"

namespace mgpp_ext {
namespace {

namespace ck = cuda_kernels;

static_assert(kHistBins == ck::kHistBins, "histogram sizes disagree");

ck::DType kernel_dtype(const at::Tensor& t, const char* op, const char* arg,
                       size_t i) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
                   ": '", arg, "[", i, "]' must be float32, bfloat16 or float16, got ", st);
  return st == at::kFloat      ? ck::DType::F32
         : st == at::kBFloat16 ? ck::DType::BF16
                               : ck::DType::F16;
}

void check_device(const at::Tensor& t, const at::Device& device,
                  const char* op, const char* arg, size_t i) {
  TORCH_CHECK_VALUE(t.device() == device, op, ": '", arg, "[", i, "]' is on ",
                    t.device(), ", expected ", device, " like the op's other tensors");
}

void check_same_shape(const at::Tensor& t, const at::Tensor& ref,
                      const char* op, const char* arg, const char* ref_arg,
                      size_t i) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": '", arg, "[", i, "]' has shape ",
                    t.sizes(), " but '", ref_arg, "[", i, "]' has shape ", ref.sizes());
}

void check_bool_mask(const at::Tensor& k, const at::Tensor& t,
                     const at::Device& device, const char* op,
                     const char* ref_arg, size_t i) {
  TORCH_CHECK_TYPE(k.scalar_type() == at::kBool, op, ": 'masks[", i,
                   "]' must be bool, got ", k.scalar_type());
  check_device(k, device, op, "masks", i);
  check_same_shape(k, t, op, "masks", ref_arg, i);
}

// Whether a and b put equal indices at equal offsets.
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         (a.strides() == b.strides() || (a.is_contiguous() && b.is_contiguous()));
}

// t if it is laid out like ref, else a copy of t laid out like ref
// (empty_like keeps the strides of a dense tensor). For read-only inputs.
at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  if (same_layout(t, ref)) return t;
  at::Tensor out = at::empty_like(ref, t.options());
  out.copy_(t);
  return out;
}

// A tensor a kernel writes: the tensor itself when its layout allows, else
// a work copy that write_back() copies into it (on the current stream,
// after the kernel).
struct InOut {
  at::Tensor original;
  at::Tensor work;
  // The written tensor of an op, which sets the layout: dense as it lies.
  static InOut lead(const at::Tensor& t) {
    return {t, t.is_non_overlapping_and_dense() ? t : t.contiguous()};
  }
  // A tensor written alongside ref; copy_in: whether the kernel reads it.
  static InOut alongside(const at::Tensor& t, const at::Tensor& ref,
                         bool copy_in) {
    if (same_layout(t, ref)) return {t, t};
    at::Tensor w = at::empty_like(ref, t.options());
    if (copy_in) w.copy_(t);
    return {t, w};
  }
  void write_back() {
    if (!work.is_same(original)) original.copy_(work);
  }
};

void check_hist(const at::Tensor& hist, const at::Device& device,
                const char* op, bool may_be_empty) {
  TORCH_CHECK(hist.scalar_type() == at::kLong, op,
              ": 'hist' must be int64, got ", hist.scalar_type());
  TORCH_CHECK(hist.dim() == 1 && (hist.numel() == kHistBins ||
                                  (may_be_empty && hist.numel() == 0)),
              op, ": 'hist' must be 1-D with ", kHistBins, " elements",
              may_be_empty ? " (or 0 for no histogram)" : "", ", got shape ",
              hist.sizes());
  if (hist.numel() == 0) return;
  TORCH_CHECK(hist.device() == device, op, ": 'hist' is on ", hist.device(),
              ", expected ", device);
  TORCH_CHECK(hist.is_contiguous(), op, ": 'hist' must be contiguous");
}

void check_select_state(const at::Tensor& s, const at::Device& device,
                        const char* op) {
  TORCH_CHECK(s.scalar_type() == at::kLong, op,
              ": 'select_state' must be int64, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.numel() == kSelectStateSize, op,
              ": 'select_state' must be 1-D with ", kSelectStateSize,
              " elements, got shape ", s.sizes());
  TORCH_CHECK(s.device() == device, op, ": 'select_state' is on ", s.device(),
              ", expected ", device);
  TORCH_CHECK(s.is_contiguous(), op, ": 'select_state' must be contiguous");
}

void check_cuda_device(const at::Device& device, const char* op,
                       const char* what) {
  TORCH_CHECK_VALUE(device.is_cuda(), op, ": '", what,
                    "' must be on a CUDA device, got ", device);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

cudaStream_t current_stream() {
  return at::cuda::getCurrentCUDAStream().stream();
}

void mgpp_step_cuda(at::TensorList params, at::TensorList grads,
                    at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    at::TensorList masks, const at::Tensor& hist, double lr,
                    double beta1, double beta2, double eps,
                    double weight_decay, int64_t step, bool apply_prior,
                    double num_examples, double lambda_mix, double sigma0_sq,
                    double sigma1_sq, int64_t hist_lo, int64_t hist_hi,
                    const std::optional<at::Tensor>& hist1, int64_t hist1_lo,
                    const std::optional<at::Tensor>& apply_if) {
  const char* op = "mgpp_step_";
  check_hist_window(hist_lo, hist_hi, op);
  const int64_t hist1_n = check_hist1(hist1, hist1_lo, hist_lo, hist_hi, hist, op);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
                    op, ": 'params', 'grads', 'exp_avgs' and 'exp_avg_sqs' must have "
                    "the same length, got ", n, ", ", grads.size(), ", ",
                    exp_avgs.size(), " and ", exp_avg_sqs.size());
  TORCH_CHECK(masks.empty() || masks.size() == n, op,
              ": 'masks' must be empty or have one mask per param (", n,
              "), got ", masks.size());
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"masks", masks, false}, {"hist", hist, true},
                       {"hist1", mem::optional_list(hist1), true}, {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (n == 0) return;

  const at::Device device = params[0].device();
  check_cuda_device(device, op, "params");
  // Work copies, the stream and the launches all belong to this device.
  const c10::cuda::CUDAGuard guard(device);
  check_hist(hist, device, op, /*may_be_empty=*/true);
  // Read by every block of the kernel, never by the host.
  const bool* gate = check_apply_if(apply_if, device, op) ? apply_if->data_ptr<bool>() : nullptr;
  // The CPU kernel checks the same conditions.
  TORCH_CHECK(lr >= 0, op, ": 'lr' must be >= 0, got ", lr);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1, op, ": 'beta1' must be in [0, 1), got ",
              beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1, op, ": 'beta2' must be in [0, 1), got ",
              beta2);
  TORCH_CHECK(eps > 0, op, ": 'eps' must be > 0, got ", eps);
  TORCH_CHECK(step >= 1, op, ": 'step' must be >= 1 (bias correction), got ",
              step);
  if (apply_prior) {
    TORCH_CHECK(num_examples > 0, op, ": 'num_examples' must be > 0, got ",
                num_examples);
    TORCH_CHECK(lambda_mix > 0 && lambda_mix < 1, op,
                ": 'lambda_mix' must be in (0, 1), got ", lambda_mix);
    TORCH_CHECK(sigma0_sq >= 1e-38 && sigma1_sq > sigma0_sq, op,
                ": need 1e-38 <= 'sigma0_sq' < 'sigma1_sq' (1/sigma0_sq must be finite "
                "in float32), got ", sigma0_sq,
                " and ", sigma1_sq);
  }
  const at::ScalarType param_type = params[0].scalar_type();
  const at::ScalarType state_type = exp_avgs[0].scalar_type();
  const ck::DType param_dtype = kernel_dtype(params[0], op, "params", 0);
  const ck::DType state_dtype = kernel_dtype(exp_avgs[0], op, "exp_avgs", 0);
  TORCH_CHECK_TYPE(state_type == param_type || state_type == at::kFloat, op,
                   ": 'exp_avgs' must have the params' dtype (", param_type,
                   ") or float32, got ", state_type);

  std::vector<InOut> ps, ms, vs;
  std::vector<at::Tensor> gs, ks;  // read-only, in the params' layout
  ps.reserve(n);
  ms.reserve(n);
  vs.reserve(n);
  gs.reserve(n);
  ks.reserve(masks.size());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    const at::Tensor& m = exp_avgs[i];
    const at::Tensor& v = exp_avg_sqs[i];
    TORCH_CHECK_TYPE(p.scalar_type() == param_type && g.scalar_type() == param_type,
                     op, ": all 'params' and 'grads' must share one dtype (",
                     param_type, "); entry ", i, " has ", p.scalar_type(), " and ",
                     g.scalar_type());
    TORCH_CHECK_TYPE(m.scalar_type() == state_type && v.scalar_type() == state_type,
                     op, ": all 'exp_avgs' and 'exp_avg_sqs' must share one dtype (",
                     state_type, "); entry ", i, " has ", m.scalar_type(), " and ",
                     v.scalar_type());
    check_device(p, device, op, "params", i);
    check_device(g, device, op, "grads", i);
    check_device(m, device, op, "exp_avgs", i);
    check_device(v, device, op, "exp_avg_sqs", i);
    check_same_shape(g, p, op, "grads", "params", i);
    check_same_shape(m, p, op, "exp_avgs", "params", i);
    check_same_shape(v, p, op, "exp_avg_sqs", "params", i);
    ps.push_back(InOut::lead(p));
    const at::Tensor& pw = ps.back().work;
    ms.push_back(InOut::alongside(m, pw, /*copy_in=*/true));
    vs.push_back(InOut::alongside(v, pw, /*copy_in=*/true));
    gs.push_back(like(g, pw));
    if (!masks.empty()) {
      check_bool_mask(masks[i], p, device, op, "params", i);
      ks.push_back(like(masks[i], pw));
    }
  }

  std::vector<void*> p_ptrs(n), m_ptrs(n), v_ptrs(n);
  std::vector<const void*> g_ptrs(n);
  std::vector<const bool*> k_ptrs(ks.size());
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    p_ptrs[i] = ps[i].work.data_ptr();
    m_ptrs[i] = ms[i].work.data_ptr();
    v_ptrs[i] = vs[i].work.data_ptr();
    g_ptrs[i] = gs[i].data_ptr();
    if (!ks.empty()) k_ptrs[i] = ks[i].data_ptr<bool>();
    numels[i] = params[i].numel();
  }
  const ck::StepTensorTable table{
      static_cast<int64_t>(n), p_ptrs.data(), g_ptrs.data(), m_ptrs.data(),
      v_ptrs.data(),           ks.empty() ? nullptr : k_ptrs.data(),
      numels.data(),           param_dtype,   state_dtype};
  const ck::StepHyper hp{lr,           beta1,       beta2,       eps,
                         weight_decay, step,        apply_prior, num_examples,
                         lambda_mix,   sigma0_sq,   sigma1_sq,
                         static_cast<int>(hist_lo),  static_cast<int>(hist_hi),
                         hist1_n > 0 ? hist1->data_ptr<int64_t>() : nullptr,
                         static_cast<int>(hist1_lo), static_cast<int>(hist1_n),
                         gate};
  int64_t* hist_ptr = hist.numel() > 0 ? hist.data_ptr<int64_t>() : nullptr;
  check_launch(ck::launch_mgpp_step(table, hp, hist_ptr, current_stream()), op);
  for (auto& t : ps) t.write_back();
  for (auto& t : ms) t.write_back();
  for (auto& t : vs) t.write_back();
}

void abs_histogram_cuda(at::TensorList tensors, const at::Tensor& select_state,
                        const at::Tensor& hist, int64_t level) {
  const char* op = "abs_histogram_";
  TORCH_CHECK(level == 0 || level == 1, op, ": 'level' must be 0 or 1, got ",
              level);
  const at::Device device = hist.device();
  check_cuda_device(device, op, "hist");
  const c10::cuda::CUDAGuard guard(device);
  check_hist(hist, device, op, /*may_be_empty=*/false);
  check_select_state(select_state, device, op);
  mem::check_disjoint({{"tensors", tensors, false}, {"select_state", select_state, false}, {"hist", hist, true}},
                      op);
  const size_t n = tensors.size();
  std::vector<at::Tensor> used;  // a histogram reads any dense layout as is
  used.reserve(n);
  std::vector<void*> ptrs(n);
  std::vector<int64_t> numels(n);
  std::vector<ck::DType> dtypes(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    dtypes[i] = kernel_dtype(t, op, "tensors", i);
    check_device(t, device, op, "tensors", i);
    used.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    ptrs[i] = used.back().data_ptr();
    numels[i] = t.numel();
  }
  const ck::TensorTable table{static_cast<int64_t>(n), ptrs.data(),
                              numels.data(), dtypes.data()};
  check_launch(ck::launch_abs_histogram(table, select_state.data_ptr<int64_t>(),
                                        hist.data_ptr<int64_t>(),
                                        static_cast<int>(level), current_stream()),
               op);
}

// Unlike the CPU kernel, a rank select_state[0] outside [1, total] cannot
// raise here (that would need a host sync): it selects bin 0 or the last bin.
void select_bin_cuda(const at::Tensor& hist, const at::Tensor& select_state,
                     int64_t level) {
  const char* op = "select_bin_";
  TORCH_CHECK(level == 0 || level == 1, op, ": 'level' must be 0 or 1, got ",
              level);
  const at::Device device = hist.device();
  check_cuda_device(device, op, "hist");
  const c10::cuda::CUDAGuard guard(device);
  check_hist(hist, device, op, /*may_be_empty=*/false);
  check_select_state(select_state, device, op);
  check_launch(ck::launch_select_bin(hist.data_ptr<int64_t>(),
                                     select_state.data_ptr<int64_t>(),
                                     static_cast<int>(level), current_stream()),
               op);
}

void apply_threshold_cuda(at::TensorList tensors,
                          const at::Tensor& select_state,
                          at::TensorList masks) {
  const char* op = "apply_threshold_";
  const size_t n = tensors.size();
  TORCH_CHECK(masks.empty() || masks.size() == n, op,
              ": 'masks' must be empty or have one mask per tensor (", n,
              "), got ", masks.size());
  mem::check_disjoint({{"tensors", tensors, true}, {"select_state", select_state, false}, {"masks", masks, true}},
                      op);
  const at::Device device = select_state.device();
  check_cuda_device(device, op, "select_state");
  const c10::cuda::CUDAGuard guard(device);
  check_select_state(select_state, device, op);
  std::vector<InOut> ts, ks;
  ts.reserve(n);
  ks.reserve(masks.size());
  std::vector<ck::DType> dtypes(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    dtypes[i] = kernel_dtype(t, op, "tensors", i);
    check_device(t, device, op, "tensors", i);
    ts.push_back(InOut::lead(t));
    if (!masks.empty()) {
      check_bool_mask(masks[i], t, device, op, "tensors", i);
      // Every mask element is written, none is read.
      ks.push_back(InOut::alongside(masks[i], ts.back().work, /*copy_in=*/false));
    }
  }
  std::vector<void*> ptrs(n);
  std::vector<bool*> k_ptrs(ks.size());
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = ts[i].work.data_ptr();
    if (!ks.empty()) k_ptrs[i] = ks[i].work.data_ptr<bool>();
    numels[i] = tensors[i].numel();
  }
  const ck::TensorTable table{static_cast<int64_t>(n), ptrs.data(),
                              numels.data(), dtypes.data()};
  check_launch(ck::launch_apply_threshold(
                   table, select_state.data_ptr<int64_t>(),
                   ks.empty() ? nullptr : k_ptrs.data(), current_stream()),
               op);
  for (auto& t : ts) t.write_back();
  for (auto& k : ks) k.write_back();
}

void apply_mask_cuda(at::TensorList tensors, at::TensorList masks) {
  const char* op = "apply_mask_";
  const size_t n = tensors.size();
  TORCH_CHECK(masks.size() == n, op, ": 'masks' must have one mask per tensor (",
              n, "), got ", masks.size());
  mem::check_disjoint({{"tensors", tensors, true}, {"masks", masks, false}}, op);
  if (n == 0) return;
  const at::Device device = tensors[0].device();
  check_cuda_device(device, op, "tensors");
  const c10::cuda::CUDAGuard guard(device);
  std::vector<InOut> ts;
  std::vector<at::Tensor> ks;  // read-only, in the tensors' layout
  ts.reserve(n);
  ks.reserve(n);
  std::vector<ck::DType> dtypes(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    dtypes[i] = kernel_dtype(t, op, "tensors", i);
    check_device(t, device, op, "tensors", i);
    check_bool_mask(masks[i], t, device, op, "tensors", i);
    ts.push_back(InOut::lead(t));
    ks.push_back(like(masks[i], ts.back().work));
  }
  std::vector<void*> ptrs(n);
  std::vector<const bool*> k_ptrs(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = ts[i].work.data_ptr();
    k_ptrs[i] = ks[i].data_ptr<bool>();
    numels[i] = tensors[i].numel();
  }
  const ck::TensorTable table{static_cast<int64_t>(n), ptrs.data(),
                              numels.data(), dtypes.data()};
  check_launch(ck::launch_apply_mask(table, k_ptrs.data(), current_stream()),
               op);
  for (auto& t : ts) t.write_back();
}

}  // namespace
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CUDA, m) {
  m.impl("mgpp_step_", &mgpp_ext::mgpp_step_cuda);
  m.impl("abs_histogram_", &mgpp_ext::abs_histogram_cuda);
  m.impl("select_bin_", &mgpp_ext::select_bin_cuda);
  m.impl("apply_threshold_", &mgpp_ext::apply_threshold_cuda);
  m.impl("apply_mask_", &mgpp_ext::apply_mask_cuda);
}
