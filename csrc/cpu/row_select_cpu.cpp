// row_keep_mask on the CPU: each row's rank keys (row_select.h) are built in
// a per-thread buffer and std::nth_element finds the k-th smallest, O(row)
// per row; rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../row_checks.h"
#include "../row_select.h"
#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {
namespace {

template <typename T>
void rows_keep(const T* s, bool* keep, int64_t rows, int64_t len, int64_t k) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, len)),
                   [&](int64_t b, int64_t e) {
    std::vector<uint64_t> keys(len), work(len);
    for (int64_t r = b; r < e; ++r) {
      const T* row = s + r * len;
      bool* out = keep + r * len;
      for (int64_t j = 0; j < len; ++j) keys[j] = rows::rank_key(static_cast<float>(row[j]), j);
      if (k == 0) {
        std::fill(out, out + len, true);
        continue;
      }
      work = keys;
      std::nth_element(work.begin(), work.begin() + (k - 1), work.end());
      const uint64_t kth = work[k - 1];  // the largest dropped key
      for (int64_t j = 0; j < len; ++j) out[j] = keys[j] > kth;
    }
  });
}

at::Tensor row_keep_mask_cpu(const at::Tensor& scores, int64_t k) {
  const char* op = "row_keep_mask";
  const int64_t len = rows::check_row_args(scores, k, op);
  TORCH_CHECK_VALUE(scores.device().is_cpu(), op, ": 'scores' must be a CPU tensor, got ",
                    scores.device());
  const at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(at::kBool));
  if (s.numel() == 0) return out;
  const int64_t rows = s.numel() / len;
  MGPP_DISPATCH_PARAM_TYPES(s.scalar_type(), op, [&] {
    rows_keep(s.const_data_ptr<scalar_t>(), out.data_ptr<bool>(), rows, len, k);
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("row_keep_mask", &mgpp_ext::cpu::row_keep_mask_cpu);
}
