// Shared constants of the two-level radix select on |x| bit patterns, and
// the device-independent composite that chains the select ops.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace mgpp_ext {

// 16 bits per level: two levels cover a 32-bit float, and a bf16 weight is
// resolved exactly by the first level alone.
constexpr int64_t kHistBins = 65536;
constexpr int kSelectStateSize = 4;

at::Tensor global_threshold(at::TensorList tensors, int64_t k);

// The largest level-0 key of an |x|: its sign bit is clear, so its high 16
// bits are at most 0x7fff (NaNs); +inf is 0x7f80.
constexpr int64_t kMaxLevel0Key = 0x7fff;

// A level-0 histogram window: bins [lo, hi] of the 65536, see mgpp_step_.
// lo above kMaxLevel0Key would clamp every key past the keys a level-0
// histogram holds (the CUDA kernel keeps only those in shared memory), and
// such a window holds nothing, so it is refused on every device.
inline void check_hist_window(int64_t lo, int64_t hi, const char* op) {
  TORCH_CHECK(lo >= 0 && lo <= hi && hi <= 65535, op,
              ": need 0 <= 'hist_lo' <= 'hist_hi' <= 65535, got ", lo, " and ", hi);
  TORCH_CHECK(lo <= kMaxLevel0Key, op, ": 'hist_lo' must be <= ", kMaxLevel0Key,
              " (the largest level-0 key of an |x|), got ", lo);
}

// The optional level-1 histograms of predicted boundary bins: empty/None, or
// n1 * 65536 int64 bins (1 <= n1 <= 4) for the level-0 keys [lo1, lo1 + n1),
// which must lie strictly inside the level-0 window (where its counts are
// exact) and need the level-0 histogram. Returns n1 (0 when absent).
inline int64_t check_hist1(const std::optional<at::Tensor>& hist1, int64_t lo1, int64_t lo,
                           int64_t hi, const at::Tensor& hist, const char* op) {
  if (!hist1.has_value() || hist1->numel() == 0) return 0;
  const at::Tensor& h = *hist1;
  TORCH_CHECK(h.scalar_type() == at::kLong && h.dim() == 1 && h.is_contiguous() &&
                  h.numel() % 65536 == 0 && h.numel() / 65536 <= 4,
              op, ": 'hist1' must be a contiguous int64 tensor of 65536, 131072, 196608 or "
              "262144 bins, got ", h.scalar_type(), " of shape ", h.sizes());
  TORCH_CHECK(h.device() == hist.device(), op, ": 'hist1' must be on 'hist''s device");
  TORCH_CHECK(hist.numel() > 0, op, ": 'hist1' needs the level-0 'hist'");
  const int64_t n1 = h.numel() / 65536;
  TORCH_CHECK(lo1 > lo && lo1 + n1 - 1 < hi, op, ": 'hist1_lo' .. 'hist1_lo' + ", n1 - 1,
              " must lie strictly inside the window (", lo, ", ", hi, "), got hist1_lo = ", lo1);
  return n1;
}

}  // namespace mgpp_ext
