// Fused MGPP step on the CPU: prior gradient + AdamW + (final mask) +
// (magnitude histogram) in one pass over param, grad, exp_avg, exp_avg_sq.
// The math is written once as a template over float and Vectorized<float>,
// so the vector body and the scalar tail cannot drift apart; the AdamW body
// is adamw_body.h's, shared with the other families' steps, with the prior
// as its gradient term.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "../memory_checks.h"
#include "../step_checks.h"
#include "adamw_body.h"
#include "cpu_utils.h"
#include "exp_vec.h"

namespace mgpp_ext {
namespace cpu {
namespace {

// The prior's constants (mgpp_ext/reference.py, prior_gradient).
struct PriorConsts {
  float c1, c2, inv_s0, inv_s1, inv_n;
  // For |p| > p_far, z = c1 + c2 p^2 exceeds z_far, beyond which p0 is so
  // small that the prior term rounds to exactly its p0 = 0 value in fp32
  // (see make_prior_consts).
  float p_far;
};

// The prior gradient (p / n) * (p0/sigma0_sq + (1 - p0)/sigma1_sq) with
// p0 = P(spike | p) = 1 / (1 + exp(c1 + c2 p^2)). exp overflows to +inf far
// from zero, and then 1/(1+inf) is exactly 0, never NaN. exp_fp32 is the
// same function in vector lanes and the tail, on every CPU (exp_fp32.h).
template <typename V>
MGPP_VEC_INLINE V prior_grad_exact(const V& p, const PriorConsts& c) {
  const V one(1.0f);
  V z = V(c.c1) + V(c.c2) * (p * p);
  V p0 = one / (one + exp_fp32(z));
  return (p * V(c.inv_n)) * (p0 * V(c.inv_s0) + (one - p0) * V(c.inv_s1));
}
// Forced inline (see adamw_update): the fast path is a few lanes' work.
MGPP_VEC_INLINE float prior_grad(float p, const PriorConsts& c) { return prior_grad_exact(p, c); }
MGPP_VEC_INLINE fVec prior_grad(const fVec& p, const PriorConsts& c) {
  // Almost every trained weight sits far out in the slab, where p0 cannot
  // change the fp32 result, or is a pruned exact zero, whose prior term is
  // +-0 whatever p0 is. For a vector made only of those the formula with
  // p0 = 0 is bitwise the exact one: (p/n) * (0/s0 + 1/s1) = (p/n) * (1/s1).
  // (The comparisons are false for NaN lanes, which take the exact path.)
  const fVec far = (p.abs() > fVec(c.p_far)) | (p == fVec(0.0f));
  if (far.zero_mask() == 0) return (p * fVec(c.inv_n)) * fVec(c.inv_s1);
  return prior_grad_exact(p, c);
}

// The gradient term of MGPP (adamw_body.h): g + the prior gradient.
struct PriorTerm {
  PriorConsts c;
  template <typename V>
  MGPP_VEC_INLINE V operator()(const V& p, const V& g, int64_t) const {
    return g + prior_grad(p, c);
  }
};

// The fixed final mask, selected rather than multiplied in, so that a
// pruned weight is +0, never -0/NaN.
struct KeepMask {
  const bool* mask;
  MGPP_VEC_INLINE void operator()(fVec& p0, fVec& p1, int64_t i) const {
    fVec k0, k1;
    load_keep2(mask + i, k0, k1);
    p0 = p0 & k0;
    p1 = p1 & k1;
  }
  MGPP_VEC_INLINE void operator()(float& p, int64_t i) const {
    if (!mask[i]) p = 0.0f;
  }
};

// Where an event step's pass counts the stored |p| (all pointers are this
// thread's own bins).
struct HistOut {
  // Level 0: keys (high 16 bits) clamped to [lo, hi]: bin lo also counts
  // the elements below it and bin hi those above it, so cumulative counts
  // are exact at every bin strictly inside the window.
  int64_t* level0;
  uint32_t lo, hi;
  // Optional level 1 of the predicted boundary bins [lo1, lo1 + n1): the low
  // 16 bits of the elements whose key is lo1 + i go to level1[i * 65536 + .],
  // so that a correct prediction spares the event its level-1 pass.
  int64_t* level1;
  uint32_t lo1, n1;

  inline void add(uint32_t bits) const {
    const uint32_t key = bits >> 16;
    ++level0[key < lo ? lo : (key > hi ? hi : key)];
    if (level1 && key - lo1 < n1) ++level1[(size_t(key - lo1) << 16) | (bits & 0xffffu)];
  }
};

// The histogram of a block's stored |p|. In a window, elements outside it
// cost two vector compares and a popcount instead of a scattered increment
// each: a window predicted from the last event holds a small fraction of
// the weights. (The level-1 bins lie inside the window.)
template <typename P>
void histogram_block(const P* p, int64_t n, const HistOut& h) {
  if (h.lo == 0 && h.hi == 65535 && !h.level1) {
    for (int64_t j = 0; j < n; ++j) ++h.level0[abs_bits(static_cast<float>(p[j])) >> 16];
    return;
  }
  int64_t below = 0, above = 0, j = 0;
  // Float compares order |p| like its bits for every non-NaN value; a NaN
  // compares false with both bounds, so "not below hi's next bin" puts it
  // above, where its bits are. That needs hi's next bin to be a float
  // (<= +inf's bits); wider windows, the full one included, take the
  // scalar loop.
  if (h.hi + 1 <= 0x7f80u) {
    const fVec lo_f(float_of_bits(h.lo << 16)), next_f(float_of_bits((h.hi + 1) << 16));
    for (; j + kBlock <= n; j += kBlock) {
      fVec a, b;
      load2(p + j, a, b);
      a = a.abs();
      b = b.abs();
      // zero_mask: lane bits where the comparison is false.
      const uint64_t full = (uint64_t(1) << kBlock) - 1;
      const uint64_t not_below = uint64_t((a < lo_f).zero_mask()) |
                                 (uint64_t((b < lo_f).zero_mask()) << fVec::size());
      const uint64_t not_under_next = uint64_t((a < next_f).zero_mask()) |
                                      (uint64_t((b < next_f).zero_mask()) << fVec::size());
      below += kBlock - __builtin_popcountll(not_below);
      above += __builtin_popcountll(not_under_next);
      for (uint64_t in = not_below & ~not_under_next & full; in != 0; in &= in - 1) {
        h.add(abs_bits(static_cast<float>(p[j + __builtin_ctzll(in)])));
      }
    }
  }
  for (; j < n; ++j) h.add(abs_bits(static_cast<float>(p[j])));
  h.level0[h.lo] += below;
  h.level0[h.hi] += above;
}

// One run of n elements; Term: PriorTerm or NoTerm.
template <typename P, typename S, typename Term>
void step_block(P* p, const P* g, S* m, S* v, const bool* mask, int64_t n, const AdamWConsts& c,
                const Term& term) {
  if (mask) {
    adamw_block(p, g, m, v, n, c, term, KeepMask{mask});
  } else {
    adamw_block(p, g, m, v, n, c, term, NoPost{});
  }
}

// Elements stepped before their histogram is taken: the stored weights are
// still in L1 when the histogram loop reads them back. (One histogram loop
// per 64K-element chunk read them back from beyond L2, which cost as much
// as the step itself; scattered increments inside the streaming loop
// measured slower still.)
constexpr int64_t kHistBlock = 2048;

template <typename P, typename S, typename Term>
void step_range(P* p, const P* g, S* m, S* v, const bool* mask, int64_t n,
                const AdamWConsts& c, const Term& term, const HistOut* hist) {
  if (!hist) {
    step_block(p, g, m, v, mask, n, c, term);
    return;
  }
  for (int64_t b = 0; b < n; b += kHistBlock) {
    const int64_t len = std::min(kHistBlock, n - b);
    step_block(p + b, g + b, m + b, v + b, mask ? mask + b : nullptr, len, c, term);
    // Of the stored (rounded) value: that is what the threshold will see.
    histogram_block(p + b, len, *hist);
  }
}

PriorConsts make_prior_consts(double n, double lam, double s0, double s1) {
  PriorConsts c;
  c.c1 = static_cast<float>(std::log(lam) - std::log1p(-lam) +
                            0.5 * std::log(s0) - 0.5 * std::log(s1));
  c.c2 = static_cast<float>(0.5 / s0 - 0.5 / s1);
  c.inv_s0 = static_cast<float>(1.0 / s0);
  c.inv_s1 = static_cast<float>(1.0 / s1);
  c.inv_n = static_cast<float>(1.0 / n);
  // p0 <= exp(-z). The prior term p0*inv_s0 + (1-p0)*inv_s1 rounds to
  // inv_s1 exactly when 1-p0 rounds to 1 (p0 < 2^-25) and p0*inv_s0 is
  // below half an ulp of inv_s1; a factor 4 and one unit of z of margin.
  const double ulp_s1 = std::ldexp(1.0, std::ilogb(double(c.inv_s1)) - 23);
  const double p0_max = std::min(std::ldexp(1.0, -27), 0.125 * ulp_s1 / double(c.inv_s0));
  const double z_far = -std::log(p0_max) + 1.0;
  // |p| > p_far implies z > z_far + 1 in exact arithmetic; the fp32 z the
  // exact path computes is within a few ulps of that (z < ~100), so it
  // stays above z_far. The factor 1.001 covers the rounding of p_far.
  const double zc = (z_far + 1.0 - double(c.c1)) / double(c.c2);
  c.p_far = zc > 0 ? static_cast<float>(std::sqrt(zc) * 1.001) : 0.0f;
  return c;
}

void check_step_args(at::TensorList params, at::TensorList grads,
                     at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList masks, const at::Tensor& hist, double lr,
                     double beta1, double beta2, double eps, int64_t step,
                     bool prior, double n, double lam, double s0, double s1) {
  const char* op = "mgpp_step_";
  const size_t np = params.size();
  check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  TORCH_CHECK(masks.empty() || masks.size() == np, op,
              ": 'masks' must be empty or have one mask per param (", np,
              "), got ", masks.size());
  check_hist(hist, op, /*allow_empty=*/true);
  if (np == 0) return;
  check_cpu_masks(masks, params, op);
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  if (prior) {
    TORCH_CHECK(n > 0, op, ": 'num_examples' must be > 0, got ", n);
    TORCH_CHECK(lam > 0 && lam < 1, op, ": 'lambda_mix' must be in (0, 1), got ", lam);
    TORCH_CHECK(s0 >= 1e-38 && s1 > s0, op,
                ": need 1e-38 <= 'sigma0_sq' < 'sigma1_sq' (1/sigma0_sq must be finite "
                "in float32), got ", s0, " and ", s1);
  }
}

void mgpp_step_cpu(at::TensorList params, at::TensorList grads,
                   at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList masks, const at::Tensor& hist, double lr,
                   double beta1, double beta2, double eps, double weight_decay,
                   int64_t step, bool apply_prior, double num_examples,
                   double lambda_mix, double sigma0_sq, double sigma1_sq,
                   int64_t hist_lo, int64_t hist_hi,
                   const std::optional<at::Tensor>& hist1, int64_t hist1_lo,
                   const std::optional<at::Tensor>& apply_if) {
  check_step_args(params, grads, exp_avgs, exp_avg_sqs, masks, hist, lr, beta1,
                  beta2, eps, step, apply_prior, num_examples, lambda_mix,
                  sigma0_sq, sigma1_sq);
  check_hist_window(hist_lo, hist_hi, "mgpp_step_");
  const int64_t n1 = check_hist1(hist1, hist1_lo, hist_lo, hist_hi, hist, "mgpp_step_");
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"masks", masks, false}, {"hist", hist, true},
                       {"hist1", mem::optional_list(hist1), true}, {"apply_if", mem::optional_list(apply_if), false}},
                      "mgpp_step_");
  if (params.empty()) return;
  if (check_apply_if(apply_if, params[0].device(), "mgpp_step_") && !apply_if->item<bool>()) {
    if (hist.numel() > 0) {
      int64_t total = 0;
      for (const auto& t : params) total += t.numel();
      hist.data_ptr<int64_t>()[hist_lo] += total;
    }
    return;
  }
  const AdamWConsts c = make_adamw_consts(lr, beta1, beta2, eps, weight_decay, step);
  const PriorTerm prior{apply_prior ? make_prior_consts(num_examples, lambda_mix, sigma0_sq,
                                                        sigma1_sq)
                                    : PriorConsts{}};

  std::vector<ContiguousInOut> p, m, v;
  std::vector<at::Tensor> g, k;
  std::vector<int64_t> numels;
  for (size_t i = 0; i < params.size(); ++i) {
    p.emplace_back(params[i]);
    m.emplace_back(exp_avgs[i]);
    v.emplace_back(exp_avg_sqs[i]);
    g.push_back(grads[i].contiguous());
    if (!masks.empty()) k.push_back(masks[i].contiguous());
    numels.push_back(params[i].numel());
  }
  const auto chunks = make_chunks(numels);
  const bool want_hist = hist.numel() > 0;
  const int nthreads = at::get_num_threads();
  // Per-thread histograms: bins are merged once at the end instead of
  // contending on shared counters.
  std::vector<int64_t> local(want_hist ? size_t(nthreads) * 65536 : 0, 0);
  const size_t bins1 = size_t(n1) << 16;
  std::vector<int64_t> local1(size_t(nthreads) * bins1, 0);

  const auto pt = params[0].scalar_type();
  const auto st = exp_avgs[0].scalar_type();
  auto run_term = [&](auto p_tag, auto s_tag, const auto& term) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
      const size_t me = size_t(at::get_thread_num());
      const HistOut h{want_hist ? local.data() + me * 65536 : nullptr, uint32_t(hist_lo),
                      uint32_t(hist_hi), n1 > 0 ? local1.data() + me * bins1 : nullptr,
                      uint32_t(hist1_lo), uint32_t(n1)};
      for (int64_t ci = b; ci < e; ++ci) {
        const Chunk& ch = chunks[ci];
        const int64_t i = ch.tensor, o = ch.begin;
        step_range<P, S>(p[i].work.data_ptr<P>() + o, g[i].const_data_ptr<P>() + o,
                         m[i].work.data_ptr<S>() + o, v[i].work.data_ptr<S>() + o,
                         k.empty() ? nullptr : k[i].const_data_ptr<bool>() + o,
                         ch.end - o, c, term, want_hist ? &h : nullptr);
      }
    });
  };
  // The prior on or off is a template choice: no per-element branch.
  auto run = [&](auto p_tag, auto s_tag) {
    if (apply_prior) {
      run_term(p_tag, s_tag, prior);
    } else {
      run_term(p_tag, s_tag, NoTerm{});
    }
  };
  dispatch_param_state(pt, st, run);
  for (auto& t : p) t.write_back();
  for (auto& t : m) t.write_back();
  for (auto& t : v) t.write_back();
  if (want_hist) {
    int64_t* out = hist.data_ptr<int64_t>();
    at::parallel_for(0, 65536, 4096, [&](int64_t b, int64_t e) {
      for (int t = 0; t < nthreads; ++t) {
        const int64_t* src = local.data() + size_t(t) * 65536;
        for (int64_t j = b; j < e; ++j) out[j] += src[j];
      }
    });
  }
  if (n1 > 0) {
    int64_t* out = hist1->data_ptr<int64_t>();
    at::parallel_for(0, int64_t(bins1), 4096, [&](int64_t b, int64_t e) {
      for (int t = 0; t < nthreads; ++t) {
        const int64_t* src = local1.data() + size_t(t) * bins1;
        for (int64_t j = b; j < e; ++j) out[j] += src[j];
      }
    });
  }
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("mgpp_step_", &mgpp_ext::cpu::mgpp_step_cpu);
}
