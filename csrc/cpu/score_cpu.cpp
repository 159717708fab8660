// movement_step_ on the CPU (schema in csrc/score_ops.cpp): adamw_body.h's
// AdamW with a term that leaves the gradient as it is and, while the weight
// and the gradient are in registers, accumulates movement's score
// S <- S - score_lr * (g * w). One pass: the step reads 4 tensors and
// writes 3, the score adds one read and one write of fp32.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../memory_checks.h"
#include "../score_checks.h"
#include "../step_checks.h"
#include "adamw_body.h"
#include "cpu_utils.h"
#include "flat_adamw_pass.h"
#include "working_copy.h"

namespace mgpp_ext {
namespace cpu {
namespace {

// g unchanged; S -= score_lr * (g * w), with w the weight before the update.
struct MovementTerm {
  float* s;
  float score_lr;

  MGPP_VEC_INLINE fVec operator()(const fVec& p, const fVec& g, int64_t i) const {
    const fVec sv = fVec::loadu(s + i) - fVec(score_lr) * (g * p);
    sv.store(s + i);
    return g;
  }
  MGPP_VEC_INLINE float operator()(const float& p, const float& g, int64_t i) const {
    s[i] = s[i] - score_lr * (g * p);
    return g;
  }
};

void movement_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, at::TensorList scores, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int64_t step,
                       double score_lr, const std::optional<at::Tensor>& apply_if) {
  const char* op = "movement_step_";
  check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  score::check_scores(params, scores, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  score::check_score_lr(score_lr, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"scores", scores, true},
                       {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty() || gate_closed(apply_if, params, op)) return;
  const AdamWConsts c = make_adamw_consts(lr, beta1, beta2, eps, weight_decay, step);
  const float score_lr_f = static_cast<float>(score_lr);
  auto s = working(scores);
  flat_adamw_pass(params, grads, exp_avgs, exp_avg_sqs, c, [&](int64_t i, int64_t o) {
    return MovementTerm{s[i].work.data_ptr<float>() + o, score_lr_f};
  });
  write_back(s);
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("movement_step_", &mgpp_ext::cpu::movement_step_cpu);
}
