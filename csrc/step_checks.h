// Argument checks of mgpp_step_ shared by the CPU kernel and the CUDA
// binding, so both refuse the same inputs with the same words.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace mgpp_ext {

// The optional gate of a step: None, or one bool element on the params'
// device. It is read where the kernel runs, so that a GPU step can be
// conditioned on a device-side check (all_finite) without the host waiting
// for it. Returns whether a gate is given.
inline bool check_apply_if(const std::optional<at::Tensor>& apply_if, const at::Device& device,
                           const char* op) {
  if (!apply_if.has_value()) return false;
  const at::Tensor& a = *apply_if;
  TORCH_CHECK(a.scalar_type() == at::kBool && a.numel() == 1, op,
              ": 'apply_if' must be a one-element bool tensor, got ", a.scalar_type(),
              " of shape ", a.sizes());
  TORCH_CHECK(a.device() == device, op, ": 'apply_if' must be on the params' device (",
              device, "), got ", a.device());
  return true;
}

}  // namespace mgpp_ext
