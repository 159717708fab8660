// Argument checks of the ADMM and SR-STE ops (regulariser_ops.cpp), shared
// by the CPU kernels and the CUDA binding so that both refuse the same
// inputs with the same words. Device-agnostic: the backends check devices
// and the AdamW lists themselves.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "nm_layout.h"

namespace mgpp_ext {
namespace reg {

// Bytes of a packed mask of numel bits.
inline int64_t packed_bytes(int64_t numel) { return (numel + 7) / 8; }

inline std::string entry(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

// duals[i]: fp32 shaped like params[i]; dual_masks[i]: a contiguous uint8
// tensor of ceil(numel / 8) bytes; all on params[i]'s device.
inline void check_duals(at::TensorList params, at::TensorList duals, at::TensorList dual_masks,
                        const char* op) {
  TORCH_CHECK_VALUE(duals.size() == params.size() && dual_masks.size() == params.size(), op,
                    ": 'params', 'duals' and 'dual_masks' must have the same length, got ",
                    params.size(), ", ", duals.size(), ", ", dual_masks.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& a = duals[i];
    const at::Tensor& k = dual_masks[i];
    TORCH_CHECK_TYPE(a.scalar_type() == at::kFloat, op, ": '", entry("duals", i),
                     "' must be float32, got ", a.scalar_type());
    TORCH_CHECK_VALUE(a.sizes() == params[i].sizes() && a.layout() == at::kStrided, op, ": '",
                      entry("duals", i), "' must be a dense tensor of shape ", params[i].sizes(),
                      " like 'params[", i, "]', got ", a.sizes());
    TORCH_CHECK_TYPE(k.scalar_type() == at::kByte, op, ": '", entry("dual_masks", i),
                     "' must be uint8 (a packed bit mask), got ", k.scalar_type());
    TORCH_CHECK_VALUE(k.numel() == packed_bytes(params[i].numel()) && k.is_contiguous(), op,
                      ": '", entry("dual_masks", i), "' must be a contiguous tensor of ",
                      packed_bytes(params[i].numel()), " bytes (one bit per element of 'params[",
                      i, "]'), got ", k.numel(), k.is_contiguous() ? "" : ", not contiguous");
    TORCH_CHECK_VALUE(a.device() == params[i].device() && k.device() == params[i].device(), op,
                      ": 'duals[", i, "]' and 'dual_masks[", i, "]' must be on 'params[", i,
                      "]''s device (", params[i].device(), "), got ", a.device(), " and ",
                      k.device());
  }
}

inline void check_rho(double rho, const char* op) {
  // The kernels compute in float32, where a larger double is inf.
  TORCH_CHECK_VALUE(rho > 0 && std::isfinite(static_cast<float>(rho)), op,
                    ": 'rho' must be finite in float32 and > 0, got ", rho);
}

// dense[i] like params[i] (dtype, shape, device); masks[i] bool of that
// shape; the n:m pattern valid along dims[i]. Returns the wrapped dims.
inline std::vector<int64_t> check_srste(at::TensorList params, at::TensorList dense,
                                        at::TensorList masks, int64_t n, int64_t m,
                                        at::IntArrayRef dims, double lambda_w, const char* op) {
  TORCH_CHECK_VALUE(lambda_w >= 0 && std::isfinite(lambda_w), op,
                    ": 'lambda_w' must be finite and >= 0, got ", lambda_w);
  nm::check_pattern(n, m, op);
  const size_t np = params.size();
  TORCH_CHECK_VALUE(dense.size() == np && masks.size() == np && dims.size() == np, op,
                    ": 'params', 'dense', 'masks' and 'dims' must have the same length, got ", np,
                    ", ", dense.size(), ", ", masks.size(), ", ", dims.size());
  std::vector<int64_t> wrapped(np);
  for (size_t i = 0; i < np; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(dense[i].scalar_type() == p.scalar_type() && dense[i].sizes() == p.sizes() &&
                          dense[i].device() == p.device() && dense[i].layout() == at::kStrided,
                      op, ": '", entry("dense", i), "' must be a dense tensor like 'params[", i,
                      "]' (", p.scalar_type(), " ", p.sizes(), " on ", p.device(), "), got ",
                      dense[i].scalar_type(), " ", dense[i].sizes(), " on ", dense[i].device());
    TORCH_CHECK_VALUE(masks[i].scalar_type() == at::kBool && masks[i].sizes() == p.sizes() &&
                          masks[i].device() == p.device() && masks[i].layout() == at::kStrided,
                      op, ": '", entry("masks", i), "' must be a bool tensor of shape ",
                      p.sizes(), " on ", p.device(), ", got ", masks[i].scalar_type(), " ",
                      masks[i].sizes(), " on ", masks[i].device());
    wrapped[i] = nm::check_group_dim(p, dims[i], m, op, entry("params", i));
  }
  return wrapped;
}

// [outer, size, inner] of dim in row-major (contiguous) order: the order
// the packed masks and the kernels' working copies use.
inline nm::GroupLayout row_major_layout(at::IntArrayRef sizes, int64_t dim) {
  nm::GroupLayout g{1, sizes[dim], 1};
  for (int64_t i = 0; i < dim; ++i) g.outer *= sizes[i];
  for (int64_t i = dim + 1; i < static_cast<int64_t>(sizes.size()); ++i) g.inner *= sizes[i];
  return g;
}

}  // namespace reg
}  // namespace mgpp_ext
