// The per-row selection rule shared by the CPU and CUDA kernels of
// row_keep_mask: in every row, exactly k entries are dropped, the k
// smallest scores, with NaN ranked above +inf and ties broken so that the
// lower index is kept (the n:m rule's tie order, nm_select.h). Each entry's
// rank key is one 64-bit integer: the score's order key in the high 32
// bits and the complement of its index in the low 32, so that keys are
// distinct and the k smallest keys are exactly the dropped entries.
#pragma once

#include <cstdint>

#include "nm_select.h"

namespace mgpp_ext {
namespace rows {

// The largest row the 32-bit index field holds.
constexpr int64_t kMaxRow = int64_t(1) << 32;

MGPP_NM_HD uint64_t rank_key(float score, int64_t index) {
  // score_key is signed; flipping the sign bit orders it as unsigned.
  const uint32_t order = static_cast<uint32_t>(nm::score_key(score)) ^ 0x80000000u;
  return (static_cast<uint64_t>(order) << 32) | (0xffffffffu - static_cast<uint32_t>(index));
}

}  // namespace rows
}  // namespace mgpp_ext
