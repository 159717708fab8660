// all_finite for any device without a dedicated kernel: max |x| is inf or
// NaN exactly when some element is.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

namespace mgpp_ext {

at::Tensor all_finite_composite(at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), "all_finite: 'tensors' is empty");
  auto norms = at::_foreach_norm(tensors, std::numeric_limits<double>::infinity());
  std::vector<at::Tensor> as_float;
  for (const auto& n : norms) as_float.push_back(n.to(at::kFloat));
  return at::stack(as_float).isfinite().all();
}

}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CompositeExplicitAutograd, m) {
  m.impl("all_finite", &mgpp_ext::all_finite_composite);
}
