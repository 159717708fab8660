// Argument checks of row_keep_mask, shared by the CPU kernel and the CUDA
// binding so that both refuse the same inputs with the same words.
#pragma once

#include <ATen/ATen.h>

#include "nm_layout.h"
#include "row_select.h"

namespace mgpp_ext {
namespace rows {

// Returns the row length.
inline int64_t check_row_args(const at::Tensor& scores, int64_t k, const char* op) {
  nm::check_float(scores, op, "scores");
  TORCH_CHECK_VALUE(scores.dim() >= 1, op, ": 'scores' must have at least one dimension, got a "
                    "0-dim tensor");
  const int64_t len = scores.size(-1);
  TORCH_CHECK_VALUE(len < kMaxRow, op, ": rows of ", len, " entries are too long (at most ",
                    kMaxRow - 1, ")");
  TORCH_CHECK_VALUE(k >= 0 && k <= len, op, ": 'k' must be in [0, ", len,
                    "] (the row length), got ", k);
  return len;
}

}  // namespace rows
}  // namespace mgpp_ext
