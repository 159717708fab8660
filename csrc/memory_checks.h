// Memory checks of the in-place ops, shared by the CPU kernels and the CUDA
// bindings, made before anything is written:
//  - a tensor an op writes must not have elements that share memory (an
//    expanded or broadcast view): the kernels work on a contiguous copy of
//    a strided tensor and copy it back, and copy_ refuses such a target only
//    after the other tensors were written;
//  - no tensor an op writes may share memory with another tensor the op
//    touches (a param passed twice, exp_avg passed as exp_avg_sq, a grad
//    that is a moment): the kernels walk tensors in parallel, so one would
//    race with the other, and a step would apply twice or read what it just
//    wrote.
// Tensors only read may share memory with each other.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mgpp_ext {
namespace mem {

// One list of an op's tensor arguments: its name and whether the op writes it.
struct List {
  const char* name;
  at::TensorList tensors;
  bool written;
};

// [first, last] byte a strided tensor with elements spans in its storage
// (torch strides are never negative).
inline std::pair<int64_t, int64_t> byte_span(const at::Tensor& t) {
  int64_t last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const int64_t e = t.element_size();
  return {t.storage_offset() * e, last * e + e - 1};
}

// The exact tests below depend on geometry alone (offsets, sizes, strides,
// element sizes), not on where the storage lives, so they run on the CPU
// for tensors of any device (no GPU work, no wait) and their answers are
// kept: an optimizer passes the same layouts every step.
namespace detail {

inline std::string geometry(const at::Tensor& t) {
  std::string key = std::to_string(t.storage_offset()) + "/" + std::to_string(t.element_size());
  for (int64_t d = 0; d < t.dim(); ++d) {
    key += ":" + std::to_string(t.size(d)) + "," + std::to_string(t.stride(d));
  }
  return key;
}

// The answer for `key`, computed by `compute` the first time it is asked.
template <typename F>
bool cached(const std::string& key, const F& compute) {
  static std::mutex lock;
  static std::unordered_map<std::string, bool> answers;
  {
    std::lock_guard<std::mutex> guard(lock);
    auto it = answers.find(key);
    if (it != answers.end()) return it->second;
  }
  const bool answer = compute();
  std::lock_guard<std::mutex> guard(lock);
  if (answers.size() >= 4096) answers.clear();  // bounded; layouts repeat
  answers.emplace(key, answer);
  return answer;
}

// t's bytes as a [sizes..., element_size] view of a CPU byte buffer whose
// byte 0 is storage byte `lo`.
inline at::Tensor bytes_in(const at::Tensor& buffer, const at::Tensor& t, int64_t lo) {
  std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
  std::vector<int64_t> strides;
  for (int64_t s : t.strides()) strides.push_back(s * t.element_size());
  sizes.push_back(t.element_size());
  strides.push_back(1);
  return buffer.as_strided(sizes, strides, t.storage_offset() * t.element_size() - lo);
}

}  // namespace detail

// Whether a and b, two tensors with elements in one storage, have a byte in
// common. Exact: where torch's own test gives up (TooHard, e.g. two column
// slices of one matrix, whose spans interleave), a's bytes are marked in a
// CPU scratch buffer over the spans and b's are looked up, once per pair of
// layouts.
inline bool share_bytes(const at::Tensor& a, const at::Tensor& b) {
  const auto sa = byte_span(a), sb = byte_span(b);
  if (sa.second < sb.first || sb.second < sa.first) return false;
  const auto status = at::get_overlap_status(a, b);
  if (status == at::MemOverlapStatus::No) return false;
  if (status != at::MemOverlapStatus::TooHard) return true;
  return detail::cached("pair " + detail::geometry(a) + " " + detail::geometry(b), [&] {
    const int64_t lo = std::min(sa.first, sb.first);
    const int64_t hi = std::max(sa.second, sb.second);
    at::Tensor marks = at::zeros({hi - lo + 1}, at::TensorOptions().dtype(at::kByte));
    detail::bytes_in(marks, a, lo).fill_(1);
    return detail::bytes_in(marks, b, lo).any().item<bool>();
  });
}

// Whether two elements of t share memory. torch answers Yes for a stride-0
// dimension and gives up (TooHard) on other overlapping layouts (windows
// from unfold); then the element offsets are counted, once per layout.
inline bool overlaps_itself(const at::Tensor& t) {
  const auto status = at::has_internal_overlap(t);
  if (status == at::MemOverlap::Yes) return true;
  if (status == at::MemOverlap::No) return false;
  return detail::cached("self " + detail::geometry(t), [&] {
    const auto span = byte_span(t);
    const int64_t count = (span.second - span.first + 1) / t.element_size();
    at::Tensor hits = at::zeros({count}, at::TensorOptions().dtype(at::kInt));
    std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
    at::Tensor one = at::ones(t.sizes(), at::TensorOptions().dtype(at::kInt));
    // hits[element offset] += 1 (a strided view of `hits` would overlap
    // itself the same way, so the offsets are spelled out).
    at::Tensor offsets = at::zeros(t.sizes(), at::TensorOptions().dtype(at::kLong));
    for (int64_t d = 0; d < t.dim(); ++d) {
      std::vector<int64_t> shape(t.dim(), 1);
      shape[d] = t.size(d);
      offsets = offsets + at::arange(t.size(d), at::TensorOptions().dtype(at::kLong)).mul(strides[d]).view(shape);
    }
    hits.index_add_(0, offsets.reshape(-1), one.reshape(-1));
    return hits.max().item<int>() > 1;
  });
}

// An optional tensor argument as a list of zero or one tensors.
inline at::TensorList optional_list(const std::optional<at::Tensor>& t) {
  return t.has_value() ? at::TensorList(*t) : at::TensorList();
}

// The name of lists[l][i] as the error gives it.
inline std::string entry(const List& list, size_t i) {
  return std::string(list.name) + "[" + std::to_string(i) + "]";
}

// Refuses, by name, a written tensor whose elements share memory, and any
// two tensors that share memory where one is written. Tensors in different
// storages never meet: they are sorted by storage and by first byte, and
// only tensors whose byte spans intersect are compared, so a step over many
// tensors (grads that are views of one DDP bucket included) costs a sort.
inline void check_disjoint(std::initializer_list<List> lists, const char* op) {
  struct Item {
    const void* storage;
    int64_t first, last;
    size_t list, index;
  };
  std::vector<List> ls(lists);
  std::vector<Item> items;
  for (size_t l = 0; l < ls.size(); ++l) {
    for (size_t i = 0; i < ls[l].tensors.size(); ++i) {
      const at::Tensor& t = ls[l].tensors[i];
      if (!t.defined() || t.numel() == 0 || !t.has_storage()) continue;
      if (ls[l].written) {
        TORCH_CHECK_VALUE(!overlaps_itself(t), op, ": '",
                          entry(ls[l], i),
                          "' has elements that share memory (an expanded, broadcast or "
                          "unfolded view); "
                          "the op writes it, so it must be a tensor of its own");
      }
      const auto span = byte_span(t);
      items.push_back({t.storage().unsafeGetStorageImpl(), span.first, span.second, l, i});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) {
    return x.storage != y.storage ? std::less<const void*>()(x.storage, y.storage)
                                  : x.first < y.first;
  });
  std::vector<size_t> open;  // items of the current storage whose span may reach the next
  for (size_t k = 0; k < items.size(); ++k) {
    const Item& b = items[k];
    open.erase(std::remove_if(open.begin(), open.end(),
                              [&](size_t j) {
                                return items[j].storage != b.storage || items[j].last < b.first;
                              }),
               open.end());
    for (size_t j : open) {
      const Item& a = items[j];
      if (!ls[a.list].written && !ls[b.list].written) continue;
      const at::Tensor& ta = ls[a.list].tensors[a.index];
      const at::Tensor& tb = ls[b.list].tensors[b.index];
      TORCH_CHECK_VALUE(!share_bytes(ta, tb), op, ": '", entry(ls[a.list], a.index),
                        "' and '", entry(ls[b.list], b.index),
                        "' share memory, and the op writes ",
                        ls[a.list].written && ls[b.list].written ? "both" : "one of them",
                        "; pass tensors of their own");
    }
    open.push_back(k);
  }
}

}  // namespace mem
}  // namespace mgpp_ext
