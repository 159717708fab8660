// The AdamW body shared by the fused CPU steps (mgpp_step_, admm_step_,
// srste_step_): decoupled decay, moments, bias correction and update, in the
// order and rounding of mgpp_ext/reference.py.
//
// Why one template: each family adds its own term to the gradient (the MGPP
// prior, the ADMM penalty, SR-STE's decay of the pruned weights) and then
// takes the same AdamW step. The term is a policy, so every family runs the
// same vector body and scalar tail and they cannot drift apart; the
// families differ only in what the term reads (built with -ffp-contract=off,
// so every operation is rounded on its own, as in the reference).
//
// A term policy is a small copyable struct with
//   template <class V> V operator()(const V& p, const V& g, int64_t i) const
// returning the gradient g' the moments see, for V = float (element i) and
// V = fVec (lanes i .. i + fVec::size() - 1); p is the weight before decay,
// widened to fp32.
#pragma once

#include <cmath>
#include <cstdint>

#include "vec_inline.h"

#include "../bias_correction.h"
#include "../step_checks.h"
#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {

struct AdamWConsts {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size, bc2_sqrt, eps;
};

// In double, rounded to fp32 once each (as the reference's scalars are).
inline AdamWConsts make_adamw_consts(double lr, double beta1, double beta2, double eps,
                                     double weight_decay, int64_t step) {
  AdamWConsts c;
  c.decay = static_cast<float>(1.0 - lr * weight_decay);
  c.beta1 = static_cast<float>(beta1);
  c.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  c.beta2 = static_cast<float>(beta2);
  c.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  c.step_size = static_cast<float>(lr / (1.0 - power(beta1, step)));
  c.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - power(beta2, step)));
  c.eps = static_cast<float>(eps);
  return c;
}

// The list checks every AdamW-based step makes: equal lengths, CPU float
// tensors, one param/grad dtype, moments of that dtype or fp32, equal
// shapes. ValueError for lengths, devices and shapes, TypeError for dtypes,
// as the CUDA bindings raise.
inline void check_adamw_lists(at::TensorList params, at::TensorList grads,
                              at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                              const char* op) {
  const size_t np = params.size();
  TORCH_CHECK_VALUE(grads.size() == np && exp_avgs.size() == np && exp_avg_sqs.size() == np, op,
              ": 'params', 'grads', 'exp_avgs' and 'exp_avg_sqs' must have the same length, "
              "got ", np, ", ", grads.size(), ", ", exp_avgs.size(), ", ", exp_avg_sqs.size());
  check_cpu_float_list(params, op, "params");
  check_cpu_float_list(grads, op, "grads");
  check_cpu_float_list(exp_avgs, op, "exp_avgs");
  check_cpu_float_list(exp_avg_sqs, op, "exp_avg_sqs");
  if (np == 0) return;
  const auto pt = params[0].scalar_type();
  const auto st = exp_avgs[0].scalar_type();
  TORCH_CHECK_TYPE(st == pt || st == at::kFloat, op,
              ": 'exp_avgs' must have the params' dtype or float32, got ", st,
              " for params of ", pt);
  for (size_t i = 0; i < np; ++i) {
    TORCH_CHECK_TYPE(params[i].scalar_type() == pt && grads[i].scalar_type() == pt,
                op, ": all 'params' and 'grads' must share one dtype (", pt,
                "); entry ", i, " has ", params[i].scalar_type(), " and ",
                grads[i].scalar_type());
    TORCH_CHECK_TYPE(exp_avgs[i].scalar_type() == st &&
                    exp_avg_sqs[i].scalar_type() == st,
                op, ": all 'exp_avgs' and 'exp_avg_sqs' must share one dtype (",
                st, "); entry ", i, " differs");
    const auto& shape = params[i].sizes();
    TORCH_CHECK_VALUE(grads[i].sizes() == shape && exp_avgs[i].sizes() == shape &&
                    exp_avg_sqs[i].sizes() == shape,
                op, ": entry ", i, " has mismatched shapes: param ", shape,
                ", grad ", grads[i].sizes(), ", exp_avg ", exp_avgs[i].sizes(),
                ", exp_avg_sq ", exp_avg_sqs[i].sizes());
  }
}

// Calls f(P{}, S{}) for the param dtype pt and the moments' dtype st (pt
// or fp32), the combinations check_adamw_lists admits.
template <typename F>
void dispatch_param_state(at::ScalarType pt, at::ScalarType st, const F& f) {
  if (pt == at::kFloat) {
    f(float{}, float{});
  } else if (pt == at::kBFloat16) {
    if (st == at::kFloat) f(at::BFloat16{}, float{}); else f(at::BFloat16{}, at::BFloat16{});
  } else {
    if (st == at::kFloat) f(at::Half{}, float{}); else f(at::Half{}, at::Half{});
  }
}

MGPP_VEC_INLINE float vsqrt(float x) { return std::sqrt(x); }
MGPP_VEC_INLINE fVec vsqrt(const fVec& x) { return x.sqrt(); }

// AdamW given the gradient after the family's term. V is float or fVec.
// Forced inline in the vector builds, as adamw_element and the terms
// (vec_inline.h): out of line it made the step 1.6x torch's fused AdamW on
// one AVX2 core.
template <typename V>
MGPP_VEC_INLINE void adamw_update(V& p, const V& g, V& m, V& v, const AdamWConsts& c) {
  p = p * V(c.decay);
  m = V(c.beta1) * m + V(c.one_minus_beta1) * g;
  v = V(c.beta2) * v + V(c.one_minus_beta2) * (g * g);
  V denom = vsqrt(v) / V(c.bc2_sqrt) + V(c.eps);
  p = p - V(c.step_size) * (m / denom);
}

// One element (or vector) of a step: g' = term(p, g), then AdamW.
template <typename V, typename Term>
MGPP_VEC_INLINE void adamw_element(V& p, const V& g, V& m, V& v, const AdamWConsts& c, const Term& term,
                          int64_t i) {
  const V gt = term(p, g, i);
  adamw_update(p, gt, m, v, c);
}

// The plain AdamW gradient.
struct NoTerm {
  template <typename V>
  MGPP_VEC_INLINE V operator()(const V&, const V& g, int64_t) const {
    return g;
  }
};

// What happens to the updated weight before it is stored: nothing.
struct NoPost {
  MGPP_VEC_INLINE void operator()(fVec&, fVec&, int64_t) const {}
  MGPP_VEC_INLINE void operator()(float&, int64_t) const {}
};

// n elements: the vector body (kBlock elements per iteration) and the scalar
// tail. W: the stored weight's type; G: the gradient's; S: the moments'.
// post(p0, p1, i) / post(p, i) may change the updated weight before it is
// stored (a fixed mask).
template <typename W, typename G, typename S, typename Term, typename Post>
inline void adamw_block(W* p, const G* g, S* m, S* v, int64_t n, const AdamWConsts& c_in,
                        const Term& term_in, const Post& post_in) {
  // Local copies: the caller's constants are floats that stores through the
  // float pointers p/m/v could alias, which would make the compiler reload
  // and re-broadcast every one of them on every iteration.
  const AdamWConsts c = c_in;
  const Term term = term_in;
  const Post post = post_in;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    fVec p0, p1, g0, g1, m0, m1, v0, v1;
    load2(p + i, p0, p1);
    load2(g + i, g0, g1);
    load2(m + i, m0, m1);
    load2(v + i, v0, v1);
    adamw_element(p0, g0, m0, v0, c, term, i);
    adamw_element(p1, g1, m1, v1, c, term, i + fVec::size());
    post(p0, p1, i);
    store2(p + i, p0, p1);
    store2(m + i, m0, m1);
    store2(v + i, v0, v1);
  }
  for (; i < n; ++i) {
    float pf = static_cast<float>(p[i]), mf = static_cast<float>(m[i]),
          vf = static_cast<float>(v[i]);
    adamw_element(pf, static_cast<float>(g[i]), mf, vf, c, term, i);
    post(pf, i);
    p[i] = static_cast<W>(pf);
    m[i] = static_cast<S>(mf);
    v[i] = static_cast<S>(vf);
  }
}

}  // namespace cpu
}  // namespace mgpp_ext
