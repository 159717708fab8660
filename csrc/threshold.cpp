// global_threshold: the composite select, written once against the
// dispatcher so that it runs wherever abs_histogram_ and select_bin_ have a
// kernel (CPU, CUDA).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "threshold.h"

namespace mgpp_ext {

at::Tensor global_threshold(at::TensorList tensors, int64_t k) {
  TORCH_CHECK(!tensors.empty(), "global_threshold: 'tensors' is empty");
  int64_t total = 0;
  for (const auto& t : tensors) total += t.numel();
  TORCH_CHECK(k >= 1 && k <= total, "global_threshold: 'k' must be in [1, ",
              total, "] (the total number of elements), got ", k);

  static auto histogram_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mgpp_ext::abs_histogram_", "")
          .typed<void(at::TensorList, const at::Tensor&, const at::Tensor&,
                      int64_t)>();
  static auto select_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mgpp_ext::select_bin_", "")
          .typed<void(const at::Tensor&, const at::Tensor&, int64_t)>();

  auto device = tensors[0].device();
  auto select_state =
      at::tensor({k, int64_t(0), int64_t(0), int64_t(0)}, at::kLong).to(device);
  auto hist = at::zeros({kHistBins}, at::TensorOptions().dtype(at::kLong).device(device));
  histogram_op.call(tensors, select_state, hist, 0);
  select_op.call(hist, select_state, 0);
  hist.zero_();
  histogram_op.call(tensors, select_state, hist, 1);
  select_op.call(hist, select_state, 1);
  // tau's bit pattern has its sign bit clear, so it fits an int32 exactly.
  return select_state.narrow(0, 2, 1).to(at::kInt).view(at::kFloat).squeeze(0);
}

}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CompositeExplicitAutograd, m) {
  m.impl("global_threshold", &mgpp_ext::global_threshold);
}
