// Shared constants of the two-level radix select on |x| bit patterns, and
// the device-independent composite that chains the select ops.
#pragma once

#include <ATen/ATen.h>

namespace mgpp_ext {

// 16 bits per level: two levels cover a 32-bit float, and a bf16 weight is
// resolved exactly by the first level alone.
constexpr int64_t kHistBins = 65536;
constexpr int kSelectStateSize = 4;

at::Tensor global_threshold(at::TensorList tensors, int64_t k);

}  // namespace mgpp_ext
