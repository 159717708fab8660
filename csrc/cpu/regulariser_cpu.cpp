// The ADMM and SR-STE ops on the CPU (schemas in csrc/regulariser_ops.cpp).
//
// The steps are adamw_body.h's AdamW with the family's gradient term, in
// one pass over param, grad, moments and the family's state. SR-STE's step
// that recomputes the mask and ADMM's n:m projection walk nm_block.h's
// units instead of flat chunks: each segment of a unit is stepped (or
// combined) and its order keys taken while it is in L1, then the unit's
// keep lanes write the mask and the masked weights. So each of them, too,
// reads and writes memory once.
//
// Every tensor is worked on in row-major order (a non-contiguous one
// through a contiguous copy), which is the order of the packed ADMM masks.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../memory_checks.h"
#include "../regulariser_checks.h"
#include "../step_checks.h"
#include "adamw_body.h"
#include "cpu_utils.h"
#include "flat_adamw_pass.h"
#include "nm_block.h"
#include "working_copy.h"

namespace mgpp_ext {
namespace cpu {
namespace {

// ADMM's gradient term: g + rho ((W - Z) + U), Z = A where the mask bit is
// set and +0 elsewhere, U = A where it is clear and +0 elsewhere (selected
// bitwise, as the reference's masked_fill does).
struct AdmmTerm {
  const float* a;
  const uint8_t* bits;  // bit i is element i of this chunk (chunks start on a byte)
  float rho;

  MGPP_VEC_INLINE fVec operator()(const fVec& p, const fVec& g, int64_t i) const {
    const fVec av = fVec::loadu(a + i);
    const fVec z = av & load_bits_keep(bits, i);
    const fVec u = av ^ z;
    return g + fVec(rho) * ((p - z) + u);
  }
  MGPP_VEC_INLINE float operator()(const float& p, const float& g, int64_t i) const {
    const bool keep = (bits[i >> 3] >> (i & 7)) & 1;
    const float z = keep ? a[i] : 0.0f;
    const float u = keep ? 0.0f : a[i];
    return g + rho * ((p - z) + u);
  }
};

// SR-STE's gradient term: g + lambda_w W where the mask drops the weight.
struct SrsteTerm {
  const bool* keep;
  float lambda_w;

  MGPP_VEC_INLINE fVec operator()(const fVec& p, const fVec& g, int64_t i) const {
    return fVec::blendv(g + fVec(lambda_w) * p, g, load_keep1(keep + i));
  }
  MGPP_VEC_INLINE float operator()(const float& p, const float& g, int64_t i) const {
    return keep[i] ? g : g + lambda_w * p;
  }
};

// Stores W M into the param beside the updated dense W (which adamw_block
// stores itself); a dropped weight is +0. The param is only written, so the
// store streams (cpu_utils.h).
template <typename W>
struct StoreMasked {
  W* param;
  const bool* keep;
  MGPP_VEC_INLINE void operator()(fVec& p0, fVec& p1, int64_t i) const {
    fVec k0, k1;
    load_keep2(keep + i, k0, k1);
    stream2(param + i, p0 & k0, p1 & k1);
  }
  MGPP_VEC_INLINE void operator()(float& p, int64_t i) const {
    param[i] = static_cast<W>(keep[i] ? p : 0.0f);
  }
};

// The padding bits of a packed mask's last byte are kept clear, as
// pack_dual_mask leaves them, so that a mask compares bytewise.
void clear_padding(uint8_t* bits, int64_t numel) {
  if (numel % 8 != 0) bits[numel / 8] &= static_cast<uint8_t>((1u << (numel % 8)) - 1u);
}

typedef uint32_t __attribute__((__may_alias__)) bits32_t;
typedef uint16_t __attribute__((__may_alias__)) bits16_t;

// out[j] = x[j] with its bits ANDed with keep[j] (0 / -1): a dropped weight
// is +0, a kept one its exact bits.
// out is only written: an fp32 out streams from its first aligned vector
// (cpu_utils.h).
template <typename T>
void masked_copy(T* out, const T* x, const int32_t* keep, int64_t len) {
  using U = std::conditional_t<sizeof(T) == 4, bits32_t, bits16_t>;
  U* o = reinterpret_cast<U*>(out);
  const U* s = reinterpret_cast<const U*>(x);
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (kStreamAlign != 0) {
      for (; j < len && !stream_aligned(out + j); ++j) o[j] = s[j] & static_cast<U>(keep[j]);
      for (; j + fVec::size() <= len; j += fVec::size()) {
        stream1(out + j, fVec::loadu(x + j) & fVec::loadu(reinterpret_cast<const float*>(keep + j)));
      }
    }
  }
  for (; j < len; ++j) o[j] = s[j] & static_cast<U>(keep[j]);
}

void mask_bytes(bool* mask, const int32_t* keep, int64_t len) {
  uint8_t* out = reinterpret_cast<uint8_t*>(mask);
  for (int64_t j = 0; j < len; ++j) out[j] = static_cast<uint8_t>(keep[j] & 1);
}

// The order keys of the updated fp32 dense weights (nm::abs_key), taken
// from the registers adamw_block is about to store instead of reading the
// stored block back.
struct AbsKeys {
  int32_t* out;
  MGPP_VEC_INLINE void operator()(fVec& p0, fVec& p1, int64_t i) const {
    nm_block::key_vec<true>(p0).store(out + i);
    nm_block::key_vec<true>(p1).store(out + i + fVec::size());
  }
  MGPP_VEC_INLINE void operator()(float& p, int64_t i) const { out[i] = nm::abs_key(p); }
};

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
using nm_block::iVec;

// The n:M keep lanes (-1 / 0) of the groups in k (M = 4 or 8), in place.
// Each 128-bit lane of k holds one group of 4, each 256-bit half one group
// of 8; a 4 x 4 transpose within 128-bit lanes or an 8 x 8 transpose turns
// them into entry-r-of-8-groups rows for select_rows, and back. Those work
// on 256-bit vectors, so a 512-bit vector goes through them as its two
// halves (each half of the M vectors is eight groups).
template <int M>
MGPP_VEC_INLINE void select_lanes(iVec (&k)[M], int n) {
  static_assert(M == 4 || M == 8, "groups of 4 or 8");
  const auto select256 = [n](__m256i (&v)[M]) MGPP_LAMBDA_INLINE {
    if constexpr (M == 4) {
      nm_block::transpose4(v);
      nm_block::select_rows<4>(v, n);
      nm_block::transpose4(v);
    } else {
      nm_block::transpose8(v);
      nm_block::select_rows<8>(v, n);
      nm_block::transpose8(v);
    }
  };
#if defined(CPU_CAPABILITY_AVX512)
  __m256i lo[M], hi[M];
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    const __m512i x = k[r];
    lo[r] = _mm512_castsi512_si256(x);
    hi[r] = _mm512_extracti64x4_epi64(x, 1);
  }
  select256(lo);
  select256(hi);
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) k[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[r]), hi[r], 1);
#else
  __m256i v[M];
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) v[r] = k[r];
  select256(v);
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) k[r] = v[r];
#endif
}

// The 4 * fVec::size() keep lanes of k (-1 / 0, in element order k[0],
// k[1], ...) as mask bytes (1 / 0) at out.
MGPP_VEC_INLINE void store_keep_bytes(bool* out, const iVec (&k)[4]) {
#if defined(CPU_CAPABILITY_AVX512)
  // Each vector's 16 lanes truncated to bytes (-1 -> 0xff), then to 1 / 0.
  const __m128i one = _mm_set1_epi8(1);
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * r),
                     _mm_and_si128(_mm512_cvtepi32_epi8(k[r]), one));
  }
#else
  // The packs work per 128-bit half, leaving 4-byte runs in the order the
  // permute undoes.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(k[0], k[1]),
                                       _mm256_packs_epi32(k[2], k[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_and_si256(_mm256_permutevar8x32_epi32(b, order),
                                       _mm256_set1_epi8(1)));
#endif
}

// SR-STE's mask-updating step over len fp32 elements of contiguous groups
// of M = 4 or 8 (len a multiple of M), M vectors (8 groups on AVX2, 16 on
// AVX-512) at a time: AdamW on the M (adamw_element with SrsteTerm, which
// reads the old mask before it is overwritten), then their order keys, the
// n:M selection (select_lanes), and M and W M written straight from the
// keep lanes. The same operations as the general path (adamw_block, keys,
// select, mask_bytes, masked_copy), so the same bits, but no keys or keep
// buffer between passes, and the streaming stores of W M interleave with
// the arithmetic instead of following it in a burst the write-combining
// buffers cannot absorb.
// The selection of a block runs kLag blocks behind its AdamW, from the
// dense weights just stored (still in L1). On a core whose AdamW waits on
// its divides, the selection then has its inputs ready and fills the other
// pipes while the next divides run; selecting each block right after its
// own divides left it waiting on them. With this lag and nm_block's 18-op
// 4-row selection the op went from 1.34x to 1.12x fused AdamW on a Zen 3
// core (benchmarks/regulariser_breakdown.py --size 768000 --threads 1;
// lags of 1 and 4 did slightly worse than 2). The last groups (fewer than
// M vectors) take the scalar forms.
template <int M>
void srste_m_run(float* w, const float* g, float* mo, float* v, bool* keep, float* param,
                 int64_t len, int n, const AdamWConsts& c_in, float lam) {
  static_assert(M == 4 || M == 8, "the register path takes groups of 4 or 8");
  const AdamWConsts c = c_in;  // local: stores through the float pointers could alias it
  const SrsteTerm term{keep, lam};
  constexpr int64_t kL = fVec::size(), kStep = M * kL, kLag = 2;
  // Always inlined: as a call, with p and k through memory, it cost 0.2x AdamW.
  const auto select_block = [&](int64_t j) MGPP_LAMBDA_INLINE {
    fVec p[M];
    iVec k[M];
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      p[r] = fVec::loadu(w + j + r * kL);
      k[r] = nm_block::key_vec<true>(p[r]);
    }
    select_lanes<M>(k, n);
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) stream1(param + j + r * kL, p[r] & at::vec::cast<float>(k[r]));
    if constexpr (M == 4) {
      store_keep_bytes(keep + j, k);
    } else {
      const iVec lo[4] = {k[0], k[1], k[2], k[3]}, hi[4] = {k[4], k[5], k[6], k[7]};
      store_keep_bytes(keep + j, lo);
      store_keep_bytes(keep + j + 4 * kL, hi);
    }
  };
  const int64_t blocks = len / kStep;
  for (int64_t b = 0; b < blocks; ++b) {
#pragma GCC unroll 8
    for (int r = 0; r < M; ++r) {
      const int64_t i = b * kStep + r * kL;
      fVec pr = fVec::loadu(w + i), mr = fVec::loadu(mo + i), vr = fVec::loadu(v + i);
      adamw_element(pr, fVec::loadu(g + i), mr, vr, c, term, i);
      pr.store(w + i);
      mr.store(mo + i);
      vr.store(v + i);
    }
    // Block b - kLag's old mask was read by its own AdamW, kLag blocks ago.
    if (b >= kLag) select_block((b - kLag) * kStep);
  }
  for (int64_t b = std::max<int64_t>(0, blocks - kLag); b < blocks; ++b) select_block(b * kStep);
  int64_t j = blocks * kStep;
  for (; j < len; j += M) {
    float pf[M];
    int32_t key[M];
    for (int e = 0; e < M; ++e) {
      const int64_t i = j + e;
      float pe = w[i], me = mo[i], ve = v[i];
      adamw_element(pe, g[i], me, ve, c, term, i);
      w[i] = pe;
      mo[i] = me;
      v[i] = ve;
      pf[e] = pe;
      key[e] = nm::abs_key(pe);
    }
    const uint32_t km = nm::keep_mask<M>(key, n);
    for (int e = 0; e < M; ++e) {
      const bool kept = (km >> e) & 1u;
      keep[j + e] = kept;
      param[j + e] = kept ? pf[e] : 0.0f;
    }
  }
}
#endif  // CPU_CAPABILITY_AVX2 || CPU_CAPABILITY_AVX512

void check_cpu_list(at::TensorList ts, const char* op, const char* name) {
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK_VALUE(ts[i].device().is_cpu(), op, ": '", reg::entry(name, i),
                      "' must be a CPU tensor, got ", ts[i].device());
  }
}

// The n:m units of each tensor (its group dim d[i], row-major order).
std::vector<nm_block::Units> nm_units(at::TensorList ts, const std::vector<int64_t>& d, int64_t m) {
  std::vector<nm_block::Units> units;
  for (size_t i = 0; i < ts.size(); ++i) {
    units.push_back(ts[i].numel() == 0
                        ? nm_block::Units{}
                        : nm_block::make_units(reg::row_major_layout(ts[i].sizes(), d[i]),
                                               ts[i].numel(), m));
  }
  return units;
}

void admm_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList duals, at::TensorList dual_masks,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   int64_t step, double rho, const std::optional<at::Tensor>& apply_if) {
  const char* op = "admm_step_";
  check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  reg::check_duals(params, duals, dual_masks, op);
  check_cpu_list(duals, op, "duals");
  check_cpu_list(dual_masks, op, "dual_masks");
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  reg::check_rho(rho, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"exp_avgs", exp_avgs, true},
                       {"exp_avg_sqs", exp_avg_sqs, true}, {"duals", duals, false},
                       {"dual_masks", dual_masks, false}, {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty() || gate_closed(apply_if, params, op)) return;
  const AdamWConsts c = make_adamw_consts(lr, beta1, beta2, eps, weight_decay, step);
  const float rho_f = static_cast<float>(rho);
  const auto a = contiguous(duals);
  flat_adamw_pass(params, grads, exp_avgs, exp_avg_sqs, c, [&](int64_t i, int64_t o) {
    return AdmmTerm{a[i].const_data_ptr<float>() + o,
                    dual_masks[i].const_data_ptr<uint8_t>() + o / 8, rho_f};
  });
}

// A[j] <- W[j] + U[j] over [offset, offset + len), U = A where the mask bit
// is clear and +0 where it is set (W + +0, as the reference adds it). The
// vector body runs from the first byte boundary, over whole bytes of the
// mask that lie inside the range (no other thread touches those).
template <typename W>
void combine_range(const W* w, float* a, const uint8_t* bits, int64_t offset, int64_t len) {
  const auto scalar = [&](int64_t j) {
    const float u = load_bit(bits, j) ? 0.0f : a[j];
    a[j] = static_cast<float>(w[j]) + u;
  };
  const int64_t end = offset + len;
  int64_t j = offset;
  for (; j < end && (j & 7) != 0; ++j) scalar(j);
  for (; j + kBlock <= end; j += kBlock) {
    fVec w0, w1;
    load2(w + j, w0, w1);
    fVec a0 = fVec::loadu(a + j), a1 = fVec::loadu(a + j + fVec::size());
    const fVec z0 = a0 & load_bits_keep(bits, j);
    const fVec z1 = a1 & load_bits_keep(bits, j + fVec::size());
    a0 = w0 + (a0 ^ z0);
    a1 = w1 + (a1 ^ z1);
    a0.store(a + j);
    a1.store(a + j + fVec::size());
  }
  for (; j < end; ++j) scalar(j);
}

void check_project_lists(at::TensorList params, at::TensorList duals, at::TensorList dual_masks,
                         const char* op) {
  check_cpu_float_list(params, op, "params");
  reg::check_duals(params, duals, dual_masks, op);
  check_cpu_list(duals, op, "duals");
  check_cpu_list(dual_masks, op, "dual_masks");
}

void admm_combine_cpu(at::TensorList params, at::TensorList duals, at::TensorList dual_masks) {
  const char* op = "admm_combine_";
  check_project_lists(params, duals, dual_masks, op);
  mem::check_disjoint({{"params", params, false}, {"duals", duals, true}, {"dual_masks", dual_masks, false}},
                      op);
  const auto w = contiguous(params);
  auto a = working(duals);
  const auto chunks = make_chunks(numels_of(params));
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e; ++ci) {
      const Chunk& ch = chunks[ci];
      const int64_t i = ch.tensor;
      MGPP_DISPATCH_PARAM_TYPES(w[i].scalar_type(), op, [&] {
        combine_range(w[i].const_data_ptr<scalar_t>(), a[i].work.data_ptr<float>(),
                      dual_masks[i].const_data_ptr<uint8_t>(), ch.begin, ch.end - ch.begin);
      });
    }
  });
  write_back(a);
}

void admm_project_cpu(at::TensorList params, at::TensorList duals, at::TensorList dual_masks,
                      int64_t n, int64_t m, at::IntArrayRef dims) {
  const char* op = "admm_project_";
  nm::check_pattern(n, m, op);
  check_project_lists(params, duals, dual_masks, op);
  TORCH_CHECK_VALUE(dims.size() == params.size(), op, ": 'dims' must have one dim per param (",
                    params.size(), "), got ", dims.size());
  std::vector<int64_t> d;
  for (size_t i = 0; i < params.size(); ++i) {
    d.push_back(nm::check_group_dim(params[i], dims[i], m, op, reg::entry("params", i)));
  }
  mem::check_disjoint({{"params", params, false}, {"duals", duals, true}, {"dual_masks", dual_masks, true}},
                      op);
  const std::vector<nm_block::Units> units = nm_units(params, d, m);
  const auto w = contiguous(params);
  auto a = working(duals);
  const auto pieces = nm_block::unit_pieces(units);
  at::parallel_for(0, int64_t(pieces.size()), 1, [&](int64_t b, int64_t e) {
    nm_block::Buffers buf;
    for (int64_t pi = b; pi < e; ++pi) {
      const Chunk& piece = pieces[pi];
      const int64_t i = piece.tensor;
      float* ai = a[i].work.data_ptr<float>();
      uint8_t* bits = dual_masks[i].data_ptr<uint8_t>();
      MGPP_DISPATCH_PARAM_TYPES(w[i].scalar_type(), op, [&] {
        const scalar_t* wi = w[i].const_data_ptr<scalar_t>();
        const auto keys = [&](int64_t offset, int64_t len, int32_t* out) {
          combine_range(wi, ai, bits, offset, len);
          nm_block::keys_row<float, true>(ai + offset, len, out);
        };
        const auto write = [&](int64_t offset, const int32_t* keep, int64_t len) {
          store_bits(bits, offset, keep, len);
        };
        for (int64_t u = piece.begin; u < piece.end; ++u) {
          nm_block::run_unit(units[i], u, int(m), int(n), buf, keys, write);
        }
      });
    }
  });
  write_back(a);
  for (size_t i = 0; i < params.size(); ++i) {
    clear_padding(dual_masks[i].data_ptr<uint8_t>(), params[i].numel());
  }
}

void admm_threshold_mask_cpu(at::TensorList duals, const at::Tensor& select_state,
                             at::TensorList dual_masks) {
  const char* op = "admm_threshold_mask_";
  check_select_state(select_state, op);
  TORCH_CHECK_VALUE(select_state.device().is_cpu(), op,
                    ": 'select_state' must be a CPU tensor, got ", select_state.device());
  // The duals are their own params here: only their shapes are compared.
  reg::check_duals(duals, duals, dual_masks, op);
  check_cpu_list(duals, op, "duals");
  check_cpu_list(dual_masks, op, "dual_masks");
  mem::check_disjoint({{"duals", duals, false}, {"select_state", select_state, false},
                       {"dual_masks", dual_masks, true}},
                      op);
  const float tau = float_of_bits(static_cast<uint32_t>(select_state.const_data_ptr<int64_t>()[2]));
  const auto a = contiguous(duals);
  const auto chunks = make_chunks(numels_of(duals));
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e; ++ci) {
      const Chunk& ch = chunks[ci];
      const float* ai = a[ch.tensor].const_data_ptr<float>();
      uint8_t* bits = dual_masks[ch.tensor].data_ptr<uint8_t>();
      // Chunks start on a byte; the last byte of a tensor may be partial.
      for (int64_t j = ch.begin; j < ch.end; j += 8) {
        uint32_t byte = 0;
        const int64_t cnt = std::min<int64_t>(8, ch.end - j);
        for (int64_t t = 0; t < cnt; ++t) byte |= uint32_t(std::fabs(ai[j + t]) > tau) << t;
        bits[j >> 3] = static_cast<uint8_t>(byte);
      }
    }
  });
}

void srste_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList dense,
                    at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList masks,
                    double lr, double beta1, double beta2, double eps, double weight_decay,
                    int64_t step, double lambda_w, int64_t n, int64_t m, at::IntArrayRef dims,
                    bool update_mask, const std::optional<at::Tensor>& apply_if) {
  const char* op = "srste_step_";
  check_adamw_lists(params, grads, exp_avgs, exp_avg_sqs, op);
  const std::vector<int64_t> d = reg::check_srste(params, dense, masks, n, m, dims, lambda_w, op);
  check_cpu_list(dense, op, "dense");
  check_cpu_list(masks, op, "masks");
  check_adamw_hyper(lr, beta1, beta2, eps, step, op);
  mem::check_disjoint({{"params", params, true}, {"grads", grads, false}, {"dense", dense, true},
                       {"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true}, {"masks", masks, true},
                       {"apply_if", mem::optional_list(apply_if), false}},
                      op);
  if (params.empty() || gate_closed(apply_if, params, op)) return;
  const AdamWConsts c = make_adamw_consts(lr, beta1, beta2, eps, weight_decay, step);
  const float lam = static_cast<float>(lambda_w);
  auto p = working(params), w = working(dense), mo = working(exp_avgs), v = working(exp_avg_sqs),
       k = working(masks);
  const auto g = contiguous(grads);
  dispatch_param_state(params[0].scalar_type(), exp_avgs[0].scalar_type(), [&](auto p_tag,
                                                                               auto s_tag) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    if (!update_mask) {
      // The mask is fixed: a flat pass, W M stored beside W.
      const auto chunks = make_chunks(numels_of(params));
      at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t ci = b; ci < e; ++ci) {
          const Chunk& ch = chunks[ci];
          const int64_t i = ch.tensor, o = ch.begin;
          const bool* keep = k[i].work.const_data_ptr<bool>() + o;
          adamw_block(w[i].work.data_ptr<P>() + o, g[i].const_data_ptr<P>() + o,
                      mo[i].work.data_ptr<S>() + o, v[i].work.data_ptr<S>() + o, ch.end - o, c,
                      SrsteTerm{keep, lam}, StoreMasked<P>{p[i].work.data_ptr<P>() + o, keep});
        }
        stream_fence();
      });
      return;
    }
    // The mask is recomputed: per n:m unit, step each segment (with the old
    // mask's term), key the stored dense weights, select, write M and W M.
    const std::vector<nm_block::Units> units = nm_units(params, d, m);
    const auto pieces = nm_block::unit_pieces(units);
    at::parallel_for(0, int64_t(pieces.size()), 1, [&](int64_t b, int64_t e) {
      nm_block::Buffers buf;
      for (int64_t pi = b; pi < e; ++pi) {
        const Chunk& piece = pieces[pi];
        const int64_t i = piece.tensor;
        P* wi = w[i].work.data_ptr<P>();
        P* pi_ = p[i].work.data_ptr<P>();
        const P* gi = g[i].const_data_ptr<P>();
        S* mi = mo[i].work.data_ptr<S>();
        S* vi = v[i].work.data_ptr<S>();
        bool* ki = k[i].work.data_ptr<bool>();
        const auto keys = [&](int64_t o, int64_t len, int32_t* out) {
          if constexpr (std::is_same_v<P, float>) {
            adamw_block(wi + o, gi + o, mi + o, vi + o, len, c, SrsteTerm{ki + o, lam}, AbsKeys{out});
          } else {  // keys of the rounded weights, as stored
            adamw_block(wi + o, gi + o, mi + o, vi + o, len, c, SrsteTerm{ki + o, lam}, NoPost{});
            nm_block::keys_row<P, true>(wi + o, len, out);
          }
        };
        const auto write = [&](int64_t o, const int32_t* keep, int64_t len) {
          mask_bytes(ki + o, keep, len);
          masked_copy(pi_ + o, wi + o, keep, len);
        };
        const nm_block::Units& U = units[i];
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
        if constexpr (std::is_same_v<P, float> && std::is_same_v<S, float>) {
          if ((m == 4 || m == 8) && U.layout.inner == 1) {
            // Contiguous groups of 4 or 8: whole blocks of groups in registers.
            const int64_t groups = U.layout.outer * U.layout.size / m;
            const int64_t g0 = piece.begin * U.block_groups;
            const int64_t g1 = std::min(groups, piece.end * U.block_groups);
            const int64_t o = m * g0, len = m * (g1 - g0);
            if (m == 4) {
              srste_m_run<4>(wi + o, gi + o, mi + o, vi + o, ki + o, pi_ + o, len, int(n), c, lam);
            } else {
              srste_m_run<8>(wi + o, gi + o, mi + o, vi + o, ki + o, pi_ + o, len, int(n), c, lam);
            }
            continue;
          }
        }
#endif
        for (int64_t u = piece.begin; u < piece.end; ++u) {
          nm_block::run_unit(U, u, int(m), int(n), buf, keys, write);
        }
      }
      stream_fence();
    });
  });
  write_back(p);
  write_back(w);
  write_back(mo);
  write_back(v);
  write_back(k);
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("admm_step_", &mgpp_ext::cpu::admm_step_cpu);
  m.impl("admm_combine_", &mgpp_ext::cpu::admm_combine_cpu);
  m.impl("admm_project_", &mgpp_ext::cpu::admm_project_cpu);
  m.impl("admm_threshold_mask_", &mgpp_ext::cpu::admm_threshold_mask_cpu);
  m.impl("srste_step_", &mgpp_ext::cpu::srste_step_cpu);
}
