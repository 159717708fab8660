// movement_step_ on the CPU (schema in csrc/score_ops.cpp): adamw_body.h's
// AdamW with a term that leaves the gradient as it is and, while the weight
// and the gradient are in registers, accumulates movement's score
// S <- S - score_lr * (g * w). One pass: the step reads 4 tensors and
// writes 3, the score adds one read and one write of fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../step_checks.h"
#include "adamw_body.h"
#include "cpu_utils.h"
#include "working_copy.h"

namespace mgpp_ext {
namespace cpu {
namespace {

// g unchanged; S -= score_lr * (g * w), with w the weight before the update.
struct MovementTerm {
  float* s;
  float score_lr;

  fVec operator()(const fVec& p, const fVec& g, int64_t i) const {
    const fVec sv = fVec::loadu(s + i) - fVec(score_lr) * (g * p);
    sv.store(s + i);
    return g;
  }
  float operator()(const float& p, const float& g, int64_t i) const {
    s[i] = s[i] - score_lr * (g * p);
    return g;
  }
};

void check_scores(at::TensorList params, at::TensorList scores, const char* op) {
  TORCH_CHECK_VALUE(scores.size() == params.size(), op, ": 'scores' must have one tensor per param (",
                    params.size(), "), got ", scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    TORCH_CHECK_VALUE(scores[i].device().is_cpu(), op, ": 'scores[", i,
                      "]' must be a CPU tensor, got ", scores[i].device());
    TORCH_CHECK_VALUE(scores[i].scalar_type() == at::kFloat, op, ": 'scores[", i,
                      "]' must be float32, got ", scores[i].scalar_type());
    TORCH_CHECK_VALUE(scores[i].sizes() == params[i].sizes(), op, ": 'scores[", i, "]' has shape ",
                      scores[i].sizes(), ", its param ", params[i].sizes());
  }
}

void movement_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                       at::TensorList exp_avg_sqs, at::TensorList scores, double lr, double beta1,
                       double beta2, double eps, double weight_decay, int64_t step,
                       double score_lr, const std::optional<at::Tensor>& apply_if) {
  const char* op = "movement_step_";
  check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  check_scores(params, scores, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  TORCH_CHECK_VALUE(std::isfinite(score_lr) && score_lr > 0, op,
                    ": 'score_lr' must be a finite number > 0, got ", score_lr);
  if (params.empty() || gate_closed(apply_if, params, op)) return;
  const AdamWConsts c = make_adamw_consts(lr, beta1, beta2, eps, weight_decay, step);
  const float score_lr_f = static_cast<float>(score_lr);
  auto p = working(params), m = working(exp_avgs), v = working(exp_avg_sqs), s = working(scores);
  const auto g = contiguous(grads);
  const auto chunks = make_chunks(numels_of(params));
  dispatch_param_state(params[0].scalar_type(), exp_avgs[0].scalar_type(), [&](auto p_tag,
                                                                               auto s_tag) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t ci = b; ci < e; ++ci) {
        const Chunk& ch = chunks[ci];
        const int64_t i = ch.tensor, o = ch.begin;
        adamw_block(p[i].work.data_ptr<P>() + o, g[i].const_data_ptr<P>() + o,
                    m[i].work.data_ptr<S>() + o, v[i].work.data_ptr<S>() + o, ch.end - o, c,
                    MovementTerm{s[i].work.data_ptr<float>() + o, score_lr_f}, NoPost{});
      }
    });
  });
  write_back(p);
  write_back(m);
  write_back(v);
  write_back(s);
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("movement_step_", &mgpp_ext::cpu::movement_step_cpu);
}
