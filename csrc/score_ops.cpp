// Op schemas of the scores that accumulate inside the fused step (movement
// pruning). Like the regulariser families (regulariser_ops.cpp) a score
// gets its own op over the shared AdamW kernel body rather than more
// arguments on mgpp_step_; each backend registers its kernel with
// TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(mgpp_ext, m) {
  // AdamW with movement's score in one pass: for each param, before its
  // update, scores <- scores - score_lr * (grad * param) (fp32, each
  // product rounded on its own), then the plain AdamW step. scores are fp32
  // and shaped like their params; grads are read only. apply_if as in
  // mgpp_step_ (a closed gate writes neither the params nor the scores).
  m.def(
      "movement_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] scores, float lr, float beta1, float beta2, "
      "float eps, float weight_decay, int step, float score_lr, Tensor? apply_if=None) -> ()");
}
