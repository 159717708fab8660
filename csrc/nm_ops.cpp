// Op schemas of the N:M (semi-structured) sparsity ops. The selection rule
// is in nm_select.h, the layouts the kernels walk in nm_layout.h; each
// backend registers its kernels with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mgpp_ext, m) {
  // The keep mask of the n:m rule along dim: in every group of m consecutive
  // entries along dim, the n largest scores (ties to the lower index, NaN
  // above +inf). A bool tensor laid out like scores (as empty_like).
  m.def("nm_mask(Tensor scores, int n, int m, int dim) -> Tensor");
  // In place, for each tensor: zero the entries the n:m rule along dims[i]
  // does not keep, scoring by scores[i] (scores empty: by |tensors[i]|).
  // masks: empty, or one bool tensor per tensor that receives the keep mask.
  // One pass over memory: each group is read, decided and written back.
  m.def(
      "nm_prune_(Tensor(a!)[] tensors, Tensor[] scores, int n, int m, int[] dims, "
      "Tensor(b!)[] masks) -> ()");
}
