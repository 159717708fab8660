// all_finite for any device without a dedicated kernel: max |x| is inf or
// NaN exactly when some element is.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

namespace mgpp_ext {

at::Tensor all_finite_composite(at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), "all_finite: 'tensors' is empty");
  // The CPU kernel's checks (check_cpu_float_list), for the devices that
  // take this composite: float tensors, all on one device.
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto st = tensors[i].scalar_type();
    TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
                     "all_finite: 'tensors[", i, "]' must be float32, bfloat16 or float16, got ", st);
    TORCH_CHECK_VALUE(tensors[i].device() == tensors[0].device(), "all_finite: 'tensors[", i,
                      "]' is on ", tensors[i].device(), ", expected ", tensors[0].device(),
                      " like 'tensors[0]'");
    TORCH_CHECK_VALUE(tensors[i].layout() == at::kStrided, "all_finite: 'tensors[", i,
                      "]' must be a dense (strided) tensor, got ", tensors[i].layout());
  }
  auto norms = at::_foreach_norm(tensors, std::numeric_limits<double>::infinity());
  std::vector<at::Tensor> as_float;
  for (const auto& n : norms) as_float.push_back(n.to(at::kFloat));
  return at::stack(as_float).isfinite().all();
}

}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CompositeExplicitAutograd, m) {
  m.impl("all_finite", &mgpp_ext::all_finite_composite);
}
