// Op schemas of mgpp_ext. Each backend (csrc/cpu, csrc/cuda) registers its
// kernels with TORCH_LIBRARY_IMPL, so the dispatcher picks the device and no
// Python code branches on it.
//
// The exact global threshold is a two-level radix select on the bit pattern
// of |w| (for non-negative floats the bit pattern orders like the value, and
// NaN sorts above inf, as in torch.sort). State of a selection lives in a
// small int64 tensor on the weights' device, so that on a GPU the whole
// select runs without a host round trip:
//   select_state[0]  k: 1-based rank still wanted (set by the caller)
//   select_state[1]  the high 16 bits of tau (written by select_bin_ level 0)
//   select_state[2]  the 32 bits of tau      (written by select_bin_ level 1)
//   select_state[3]  elements equal to tau's high bits bucket (level 0)
#include <Python.h>
#include <torch/library.h>

// An empty module: importing mgpp_ext._C runs the static registrations below
// and in the backend files. Ops are then reached through torch.ops.mgpp_ext.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(mgpp_ext, m) {
  // Prior gradient + AdamW over a list of same-dtype tensors in one pass.
  // grads are read only. masks: empty, or one bool tensor per param that is
  // multiplied in after the update (the fixed final mask). hist: empty, or
  // an int64 tensor of 65536 bins that receives the level-0 histogram of the
  // updated |param| (added to what it holds), with every bin index clamped
  // to [hist_lo, hist_hi]: bin hist_lo also counts everything below it and
  // bin hist_hi everything above, so the counts are exact strictly inside
  // the window (everywhere for the default full window). hist1: None, or
  // n1 * 65536 bins (n1 <= 4) that receive the level-1 histograms (low 16
  // bits) of the elements whose high 16 bits are hist1_lo + i, i < n1: the
  // predicted boundary bins, strictly inside the window. apply_if: None, or
  // a one-element bool tensor on the params' device; when it holds False
  // params and state are left as they are (it is read on the device, so a
  // GPU step can be gated on a device-side check without a host round
  // trip), and hist, if given, receives every element in bin hist_lo, so
  // that a select chained on it stays well defined (its result is then
  // meaningless: the caller reads the gate with the select's result).
  m.def(
      "mgpp_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor[] masks, Tensor(d!) hist, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, int step, "
      "bool apply_prior, float num_examples, float lambda_mix, "
      "float sigma0_sq, float sigma1_sq, int hist_lo=0, int hist_hi=65535, "
      "Tensor(e!)? hist1=None, int hist1_lo=0, Tensor? apply_if=None) -> ()");
  // Histogram of |x| for all tensors, added into hist (65536 int64 bins).
  // level 0 bins the high 16 bits of |x|; level 1 bins the low 16 bits of
  // the elements whose high bits equal select_state[1].
  m.def(
      "abs_histogram_(Tensor[] tensors, Tensor select_state, Tensor(a!) hist, "
      "int level) -> ()");
  // Finds the bin holding the select_state[0]-th smallest element and
  // narrows select_state accordingly (see the layout above).
  m.def("select_bin_(Tensor hist, Tensor(a!) select_state, int level) -> ()");
  // Zeroes every element with |x| <= tau (tau from select_state[2]). masks:
  // empty, or one bool tensor per tensor that receives |x| > tau.
  m.def(
      "apply_threshold_(Tensor(a!)[] tensors, Tensor select_state, "
      "Tensor(b!)[] masks) -> ()");
  // tensors *= masks, elementwise.
  m.def("apply_mask_(Tensor(a!)[] tensors, Tensor[] masks) -> ()");
  // tau = the k-th smallest |x| over all tensors (1 <= k <= total numel),
  // as a 0-dim float32 tensor; equal to torch.kthvalue of the concatenated
  // |x|, without concatenating.
  m.def("global_threshold(Tensor[] tensors, int k) -> Tensor");
  // True (0-dim bool on the tensors' device) iff no element is inf or NaN.
  // One read pass; used to refuse a step before anything is written.
  m.def("all_finite(Tensor[] tensors) -> Tensor");
}
