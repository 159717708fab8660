// Argument checks and memory layout of the N:M ops, shared by the CPU kernel
// and the CUDA binding so that both refuse the same inputs with the same
// words and walk the same layout.
//
// Layout: a dense tensor is a permutation of a contiguous one. Taken in
// memory order (dims sorted by stride), the group dim splits the memory into
// [outer, size, inner]: element (o, d, q) lies at (o * size + d) * inner + q.
// inner == 1 means the groups are contiguous runs of m elements (the group
// dim is the innermost one in memory); inner > 1 means the m entries of a
// group are inner elements apart, and inner neighbouring groups sit side by
// side (dim 0 of a GPT-2 Conv1D weight [in, out]). The kernels handle both
// as the tensor lies; only a non-dense tensor (a slice) is copied first.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "memory_checks.h"
#include "nm_select.h"

namespace mgpp_ext {
namespace nm {

struct GroupLayout {
  int64_t outer;
  int64_t size;  // of the group dim; a multiple of m
  int64_t inner;
};

inline void check_pattern(int64_t n, int64_t m, const char* op) {
  TORCH_CHECK_VALUE(m >= 2 && m <= kMaxM, op, ": 'm' must be in [2, ", kMaxM, "], got m = ", m);
  TORCH_CHECK_VALUE(n >= 1 && n < m, op, ": 'n' must be in [1, m - 1] = [1, ", m - 1,
                    "], got n = ", n);
}

inline void check_float(const at::Tensor& t, const char* op, const std::string& name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op, ": '", name,
                   "' must be float32, bfloat16 or float16, got ", st);
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": '", name,
                    "' must be a dense (strided) tensor, got ", t.layout());
}

// dim wrapped into [0, t.dim()), with t's size along it a multiple of m.
inline int64_t check_group_dim(const at::Tensor& t, int64_t dim, int64_t m, const char* op,
                               const std::string& name) {
  TORCH_CHECK_VALUE(t.dim() >= 1, op, ": '", name, "' must have at least one dimension, got a ",
                    "0-dim tensor");
  TORCH_CHECK_INDEX(dim >= -t.dim() && dim < t.dim(), op, ": 'dim' = ", dim,
                    " is out of range for '", name, "' with ", t.dim(), " dimensions");
  const int64_t d = dim < 0 ? dim + t.dim() : dim;
  TORCH_CHECK_VALUE(t.size(d) % m == 0, op, ": '", name, "' has size ", t.size(d), " along dim ",
                    d, ", which is not a multiple of m = ", m, " (shape ", t.sizes(), ")");
  return d;
}

// Whether a and b put equal indices at equal offsets (the strides of size-1
// dims do not matter).
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (a.size(i) != 1 && a.stride(i) != b.stride(i)) return false;
  }
  return true;
}

// The tensor the kernel walks: t itself when dense, else a contiguous copy.
inline at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

// [outer, size, inner] of dim in the memory order of a dense tensor with
// numel() > 0.
inline GroupLayout group_layout(const at::Tensor& t, int64_t dim) {
  std::vector<int64_t> order;
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (t.size(i) != 1 || i == dim) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return t.stride(a) > t.stride(b); });
  GroupLayout g{1, t.size(dim), 1};
  bool before = true;
  int64_t expected = 1;  // the stride a contiguous walk from the innermost dim expects
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    TORCH_INTERNAL_ASSERT(t.size(*it) == 1 || t.stride(*it) == expected,
                          "N:M ops: tensor is not dense in memory order");
    expected *= t.size(*it);
  }
  for (int64_t i : order) {
    if (i == dim) {
      before = false;
    } else if (before) {
      g.outer *= t.size(i);
    } else {
      g.inner *= t.size(i);
    }
  }
  return g;
}

// A read-only tensor in ref's layout: itself, or a copy.
inline at::Tensor like(const at::Tensor& t, const at::Tensor& ref) {
  if (same_layout(t, ref)) return t;
  at::Tensor out = at::empty_like(ref, t.options());
  out.copy_(t);
  return out;
}

// A written tensor and the tensor the kernel writes instead when its layout
// differs from the walk's (write_back() copies the result in).
struct Written {
  at::Tensor original;
  at::Tensor work;
  void write_back() {
    if (work.defined() && !work.is_same(original)) original.copy_(work);
  }
};

// The lead tensor of a walk (the one pruned in place, or the scores of
// nm_mask): dense as it lies, or through a contiguous copy.
inline Written lead(const at::Tensor& t) { return {t, dense(t)}; }

// Written alongside ref, in ref's layout; copy_in: whether the kernel reads
// it first.
inline Written alongside(const at::Tensor& t, const at::Tensor& ref, bool copy_in) {
  if (same_layout(t, ref)) return {t, t};
  at::Tensor w = at::empty_like(ref, t.options());
  if (copy_in) w.copy_(t);
  return {t, w};
}

// A score read while a tensor the op prunes in place is written could see
// that tensor half pruned (the CPU walks tensors in parallel, the GPU one
// after another), so scores[i] must not share memory with any tensor,
// except tensors[i] seen through the same view (each group is read whole
// before it is written). Only tensors in the same storage are compared.
inline void check_scores_disjoint(at::TensorList tensors, at::TensorList scores, const char* op) {
  for (size_t i = 0; i < scores.size(); ++i) {
    const at::Tensor& s = scores[i];
    if (s.numel() == 0 || !s.has_storage()) continue;
    for (size_t j = 0; j < tensors.size(); ++j) {
      const at::Tensor& t = tensors[j];
      if (t.numel() == 0 || !t.has_storage() || !s.storage().is_alias_of(t.storage())) continue;
      if (j == i && s.data_ptr() == t.data_ptr() && s.strides() == t.strides()) continue;
      TORCH_CHECK_VALUE(!mem::share_bytes(s, t), op,
                        ": 'scores[", i, "]' shares memory with 'tensors[", j,
                        "]', which the op prunes in place while it reads the scores; "
                        "pass a copy (scores[i] may be tensors[i] itself)");
    }
  }
}

// The list checks of nm_prune_ (lengths, shapes, dtypes, devices, dims),
// before anything is written. Returns the wrapped dims.
inline std::vector<int64_t> check_prune_args(at::TensorList tensors, at::TensorList scores,
                                             int64_t n, int64_t m, at::IntArrayRef dims,
                                             at::TensorList masks, const char* op) {
  check_pattern(n, m, op);
  const size_t count = tensors.size();
  TORCH_CHECK_VALUE(dims.size() == count, op, ": 'dims' must have one dim per tensor (", count,
                    "), got ", dims.size());
  TORCH_CHECK_VALUE(scores.empty() || scores.size() == count, op,
                    ": 'scores' must be empty (score = |tensor|) or have one tensor per tensor (",
                    count, "), got ", scores.size());
  TORCH_CHECK_VALUE(masks.empty() || masks.size() == count, op,
                    ": 'masks' must be empty or have one mask per tensor (", count, "), got ",
                    masks.size());
  std::vector<int64_t> wrapped(count);
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& t = tensors[i];
    const std::string ti = "tensors[" + std::to_string(i) + "]";
    check_float(t, op, ti);
    TORCH_CHECK_VALUE(t.device() == tensors[0].device(), op, ": '", ti, "' is on ", t.device(),
                      ", expected ", tensors[0].device(), " like 'tensors[0]'");
    wrapped[i] = check_group_dim(t, dims[i], m, op, ti);
    if (!scores.empty()) {
      const at::Tensor& s = scores[i];
      const std::string si = "scores[" + std::to_string(i) + "]";
      check_float(s, op, si);
      TORCH_CHECK_VALUE(s.sizes() == t.sizes(), op, ": '", si, "' has shape ", s.sizes(),
                        " but '", ti, "' has shape ", t.sizes());
      TORCH_CHECK_VALUE(s.device() == t.device(), op, ": '", si, "' is on ", s.device(),
                        ", expected ", t.device(), " like '", ti, "'");
    }
    if (!masks.empty()) {
      const at::Tensor& k = masks[i];
      const std::string ki = "masks[" + std::to_string(i) + "]";
      TORCH_CHECK_TYPE(k.scalar_type() == at::kBool, op, ": '", ki, "' must be bool, got ",
                       k.scalar_type());
      TORCH_CHECK_VALUE(k.sizes() == t.sizes(), op, ": '", ki, "' has shape ", k.sizes(),
                        " but '", ti, "' has shape ", t.sizes());
      TORCH_CHECK_VALUE(k.device() == t.device(), op, ": '", ki, "' is on ", k.device(),
                        ", expected ", t.device(), " like '", ti, "'");
      TORCH_CHECK_VALUE(k.layout() == at::kStrided, op, ": '", ki,
                        "' must be a dense (strided) tensor, got ", k.layout());
    }
  }
  // The tensors and masks the op writes share memory with nothing it
  // touches; a score may be its own tensor (checked next), not a mask.
  mem::check_disjoint({{"tensors", tensors, true}, {"masks", masks, true}}, op);
  mem::check_disjoint({{"scores", scores, false}, {"masks", masks, true}}, op);
  if (!scores.empty()) check_scores_disjoint(tensors, scores, op);
  return wrapped;
}

// One tensor's walk: what the kernel reads and writes, in one layout.
struct Walk {
  Written x;       // pruned in place (undefined for nm_mask)
  at::Tensor s;    // scores (undefined: |x|)
  Written mask;    // undefined: no mask output
  GroupLayout layout;
  int64_t numel;
};

// The walks of nm_prune_ (after check_prune_args).
inline std::vector<Walk> prune_walks(at::TensorList tensors, at::TensorList scores,
                                     const std::vector<int64_t>& dims, at::TensorList masks) {
  std::vector<Walk> walks;
  walks.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].numel() == 0) continue;
    Walk w;
    w.x = lead(tensors[i]);
    const at::Tensor& ref = w.x.work;
    if (!scores.empty()) w.s = scores[i].is_same(tensors[i]) ? ref : like(scores[i], ref);
    if (!masks.empty()) w.mask = alongside(masks[i], ref, /*copy_in=*/false);
    w.layout = group_layout(ref, dims[i]);
    w.numel = ref.numel();
    walks.push_back(std::move(w));
  }
  return walks;
}

// The walk of nm_mask, whose result is laid out like scores (empty_like).
inline Walk mask_walk(const at::Tensor& scores, const at::Tensor& out, int64_t dim) {
  Walk w;
  w.s = dense(scores);
  w.mask = alongside(out, w.s, /*copy_in=*/false);
  w.layout = group_layout(w.s, dim);
  w.numel = w.s.numel();
  return w;
}

}  // namespace nm
}  // namespace mgpp_ext
