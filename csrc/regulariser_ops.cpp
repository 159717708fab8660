// Op schemas of the regulariser families that own their step (ADMM, SR-STE).
// Each family has its own op over the shared AdamW kernel body
// (csrc/cpu/adamw_body.h), so that mgpp_step_ does not carry every family's
// arguments; each backend registers its kernels with TORCH_LIBRARY_IMPL.
//
// ADMM's Z and U are held as one fp32 tensor A per param plus a packed mask
// M (uint8, ceil(numel / 8) bytes, bit j of byte i for element 8 i + j in
// row-major order): Z = A M and U = A (1 - M), which is exact right after a
// projection, when Z and U have disjoint supports.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mgpp_ext, m) {
  // AdamW on L(W) + (rho / 2) ||W - Z + U||^2 in one pass: each param's
  // step sees the gradient g + rho ((W - Z) + U). grads, duals and
  // dual_masks are read only. apply_if as in mgpp_step_.
  m.def(
      "admm_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor[] duals, Tensor[] dual_masks, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, int step, float rho, "
      "Tensor? apply_if=None) -> ()");
  // Z <- Proj_{n:m}(W + U), U <- U + W - Z in one pass: A <- W + U and M <-
  // the n:m keep mask of |A| along dims[i] (ties as nm_mask).
  m.def(
      "admm_project_(Tensor[] params, Tensor(a!)[] duals, Tensor(b!)[] dual_masks, int n, "
      "int m, int[] dims) -> ()");
  // A <- W + U (the argument of a global projection, which then selects a
  // threshold over the A's and calls admm_threshold_mask_).
  m.def("admm_combine_(Tensor[] params, Tensor(a!)[] duals, Tensor[] dual_masks) -> ()");
  // M <- |A| > tau, tau from a finished select (select_state[2]).
  m.def(
      "admm_threshold_mask_(Tensor[] duals, Tensor select_state, Tensor(a!)[] dual_masks) -> ()");
  // SR-STE's step in one pass: AdamW on the dense weights with the gradient
  // g + lambda_w (1 - M) W (g taken at W M), then, if update_mask, M <- the
  // n:m keep mask of the updated |W| along dims[i], and params <- W M.
  m.def(
      "srste_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] dense, "
      "Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] masks, float lr, "
      "float beta1, float beta2, float eps, float weight_decay, int step, float lambda_w, "
      "int n, int m, int[] dims, bool update_mask, Tensor? apply_if=None) -> ()");
}
