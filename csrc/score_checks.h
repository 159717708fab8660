// Argument checks of movement_step_ (schema in score_ops.cpp), shared by the
// CPU kernel and the CUDA binding so that both refuse the same inputs with
// the same words. Device-agnostic: a score must sit on its param's device,
// and the backends check the AdamW lists themselves.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace mgpp_ext {
namespace score {

// scores[i]: fp32, shaped like params[i] and on its device.
inline void check_scores(at::TensorList params, at::TensorList scores, const char* op) {
  TORCH_CHECK_VALUE(scores.size() == params.size(), op,
                    ": 'scores' must have one tensor per param (", params.size(), "), got ",
                    scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    TORCH_CHECK_VALUE(scores[i].device() == params[i].device(), op, ": 'scores[", i,
                      "]' must be on ", params[i].device(), " like 'params[", i, "]', got ",
                      scores[i].device());
    TORCH_CHECK_VALUE(scores[i].scalar_type() == at::kFloat, op, ": 'scores[", i,
                      "]' must be float32, got ", scores[i].scalar_type());
    TORCH_CHECK_VALUE(scores[i].sizes() == params[i].sizes(), op, ": 'scores[", i,
                      "]' has shape ", scores[i].sizes(), ", its param ", params[i].sizes());
  }
}

inline void check_score_lr(double score_lr, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(score_lr) && score_lr > 0, op,
                    ": 'score_lr' must be a finite number > 0, got ", score_lr);
}

}  // namespace score
}  // namespace mgpp_ext
