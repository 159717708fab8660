// The list helpers of the multi-tensor CPU ops (regulariser_cpu.cpp,
// score_cpu.cpp): working copies of in-out lists, contiguous copies of
// read-only ones, the step's gate.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "../step_checks.h"
#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {

// A gate that is closed: nothing is written.
inline bool gate_closed(const std::optional<at::Tensor>& apply_if, at::TensorList params,
                        const char* op) {
  if (params.empty()) return false;
  return check_apply_if(apply_if, params[0].device(), op) && !apply_if->item<bool>();
}

// In-out tensors, each worked on contiguously (see ContiguousInOut).
inline std::vector<ContiguousInOut> working(at::TensorList ts) {
  std::vector<ContiguousInOut> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.emplace_back(t);
  return out;
}

// Read-only tensors, contiguous (a copy only where one is not).
inline std::vector<at::Tensor> contiguous(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

inline void write_back(std::vector<ContiguousInOut>& ts) {
  for (auto& t : ts) t.write_back();
}

inline std::vector<int64_t> numels_of(at::TensorList ts) {
  std::vector<int64_t> n;
  n.reserve(ts.size());
  for (const auto& t : ts) n.push_back(t.numel());
  return n;
}

}  // namespace cpu
}  // namespace mgpp_ext
