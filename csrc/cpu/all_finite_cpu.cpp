// all_finite on the CPU: a read-only pass that checks the exponent bits, so
// the optimizer can refuse an inf/NaN gradient before it writes anything.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {
namespace {

template <typename T>
inline uint32_t nonfinite_bit(const T& x) {
  // inf/NaN have all exponent bits set, i.e. |x| bits >= 0x7f800000 once
  // widened to fp32.
  return static_cast<uint32_t>(abs_bits(static_cast<float>(x)) >= 0x7f800000u);
}

template <typename T>
bool range_has_nonfinite(const T* x, int64_t n) {
  // Branch-free ORs vectorise. The range is read as eight interleaved
  // streams: one stream per core left this read-only pass at about half
  // the bandwidth the step's several streams reach (too few misses in
  // flight); eight took a 50M-weight fp32 check from 12.0 to 8.7 ms on 2
  // cores.
  const int64_t q = n / 8;
  uint32_t bad = 0;
  for (int64_t j = 0; j < q; ++j) {
    bad |= nonfinite_bit(x[j]) | nonfinite_bit(x[j + q]) | nonfinite_bit(x[j + 2 * q]) |
           nonfinite_bit(x[j + 3 * q]) | nonfinite_bit(x[j + 4 * q]) | nonfinite_bit(x[j + 5 * q]) |
           nonfinite_bit(x[j + 6 * q]) | nonfinite_bit(x[j + 7 * q]);
  }
  for (int64_t j = 8 * q; j < n; ++j) bad |= nonfinite_bit(x[j]);
  return bad != 0;
}

at::Tensor all_finite_cpu(at::TensorList tensors) {
  const char* op = "all_finite";
  TORCH_CHECK(!tensors.empty(), op, ": 'tensors' is empty");
  check_cpu_float_list(tensors, op, "tensors");
  std::vector<at::Tensor> ts;
  std::vector<int64_t> numels;
  for (const auto& t : tensors) {
    ts.push_back(t.contiguous());
    numels.push_back(t.numel());
  }
  const auto chunks = make_chunks(numels);
  std::atomic<bool> found{false};
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e && !found.load(std::memory_order_relaxed); ++ci) {
      const Chunk& ch = chunks[ci];
      const at::Tensor& t = ts[ch.tensor];
      bool bad = false;
      MGPP_DISPATCH_PARAM_TYPES(t.scalar_type(), "all_finite", [&] {
        bad = range_has_nonfinite(t.const_data_ptr<scalar_t>() + ch.begin, ch.end - ch.begin);
      });
      if (bad) found.store(true, std::memory_order_relaxed);
    }
  });
  return at::scalar_tensor(!found.load(), at::TensorOptions().dtype(at::kBool));
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("all_finite", &mgpp_ext::cpu::all_finite_cpu);
}
