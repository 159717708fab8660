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

// The hyper-parameter checks every AdamW-based step makes (CPU and CUDA).
inline void check_adamw_hyper(double lr, double beta1, double beta2, double eps, int64_t step,
                              const char* op) {
  TORCH_CHECK(lr >= 0, op, ": 'lr' must be >= 0, got ", lr);
  TORCH_CHECK(beta1 >= 0 && beta1 < 1, op, ": 'beta1' must be in [0, 1), got ", beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1, op, ": 'beta2' must be in [0, 1), got ", beta2);
  TORCH_CHECK(eps > 0, op, ": 'eps' must be > 0, got ", eps);
  TORCH_CHECK(step >= 1, op, ": 'step' must be >= 1 (bias correction), got ", step);
}

}  // namespace mgpp_ext
