// Op schema of the exact per-row selection (the rule is in row_select.h;
// each backend registers its kernel with TORCH_LIBRARY_IMPL).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mgpp_ext, m) {
  // The keep mask of scores (a float tensor of at least one dim) row by row
  // along its last dim: in every row the k smallest scores are dropped,
  // exactly k (NaN above +inf, ties drop the higher index first), the rest
  // kept. 0 <= k <= the row length. A bool tensor shaped like scores.
  m.def("row_keep_mask(Tensor scores, int k) -> Tensor");
}
