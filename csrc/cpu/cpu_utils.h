// Helpers shared by the CPU kernels: argument checks, fp32 widening of
// fp32/bf16/fp16 vectors, and the chunk table that lets one parallel_for
// cover many tensors of very different sizes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstring>
#include <vector>

// Dispatch over the three parameter dtypes the kernels support (fp64 has no
// place in a bf16/fp16-vector kernel, so AT_DISPATCH_FLOATING_TYPES is wrong).
#define MGPP_DISPATCH_PARAM_TYPES(TYPE, NAME, ...)                              \
  [&] {                                                                        \
    switch (TYPE) {                                                            \
      case at::kFloat: {                                                       \
        using scalar_t = float;                                                \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      case at::kBFloat16: {                                                    \
        using scalar_t = at::BFloat16;                                         \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      case at::kHalf: {                                                        \
        using scalar_t = at::Half;                                             \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      default:                                                                 \
        TORCH_CHECK(false, NAME, ": unsupported dtype ", TYPE);                \
    }                                                                          \
  }()

namespace mgpp_ext {
namespace cpu {

using at::vec::Vectorized;
using fVec = Vectorized<float>;

// Elements a kernel handles per vector iteration: two fp32 vectors, which is
// exactly one bf16/fp16 vector.
constexpr int64_t kBlock = 2 * fVec::size();
// Work unit of the parallel loop. Small enough to balance tensors of very
// different sizes, large enough to amortise the per-chunk bookkeeping.
constexpr int64_t kChunk = 1 << 16;

inline uint32_t abs_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits & 0x7fffffffu;
}

template <typename T>
inline void load2(const T* p, fVec& a, fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a = fVec::loadu(p);
    b = fVec::loadu(p + fVec::size());
  } else {
    std::tie(a, b) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
  }
}

template <typename T>
inline void store2(T* p, const fVec& a, const fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    a.store(p);
    b.store(p + fVec::size());
  } else {
    at::vec::convert_from_float<T>(a, b).store(p);
  }
}

// Widens kBlock bool mask bytes to 1.0f / 0.0f.
inline void load_mask2(const bool* m, fVec& a, fVec& b) {
  float tmp[kBlock];
  for (int64_t j = 0; j < kBlock; ++j) tmp[j] = m[j] ? 1.0f : 0.0f;
  a = fVec::loadu(tmp);
  b = fVec::loadu(tmp + fVec::size());
}

// One contiguous piece of one tensor.
struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

inline std::vector<Chunk> make_chunks(const std::vector<int64_t>& numels) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < static_cast<int64_t>(numels.size()); ++i) {
    for (int64_t b = 0; b < numels[i]; b += kChunk) {
      chunks.push_back({i, b, std::min(numels[i], b + kChunk)});
    }
  }
  return chunks;
}

// The kernels work on contiguous memory. A non-contiguous tensor is handled
// through a contiguous copy that is written back afterwards (rare: optimizer
// parameters are contiguous in practice).
struct ContiguousInOut {
  at::Tensor original;
  at::Tensor work;
  explicit ContiguousInOut(const at::Tensor& t)
      : original(t), work(t.is_contiguous() ? t : t.contiguous()) {}
  void write_back() {
    if (!work.is_same(original)) original.copy_(work);
  }
};

inline void check_cpu_float_list(at::TensorList tensors, const char* op,
                                 const char* name) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK(t.device().is_cpu(), op, ": '", name, "[", i,
                "]' must be a CPU tensor, got ", t.device());
    TORCH_CHECK(t.layout() == at::kStrided, op, ": '", name, "[", i,
                "]' must be a dense (strided) tensor, got ", t.layout());
    auto st = t.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
                ": '", name, "[", i,
                "]' must be float32, bfloat16 or float16, got ", st);
  }
}

// masks[i] must be a CPU bool tensor shaped like tensors[i] (the final mask
// a kernel reads or writes next to tensors[i]).
inline void check_cpu_masks(at::TensorList masks, at::TensorList tensors, const char* op) {
  for (size_t i = 0; i < masks.size(); ++i) {
    TORCH_CHECK(masks[i].scalar_type() == at::kBool && masks[i].sizes() == tensors[i].sizes() &&
                    masks[i].device().is_cpu(),
                op, ": 'masks[", i, "]' must be a CPU bool tensor of shape ",
                tensors[i].sizes(), ", got ", masks[i].scalar_type(), " ",
                masks[i].sizes(), " on ", masks[i].device());
  }
}

inline void check_hist(const at::Tensor& hist, const char* op, bool allow_empty) {
  TORCH_CHECK(hist.scalar_type() == at::kLong && hist.dim() == 1 &&
                  (hist.numel() == 65536 || (allow_empty && hist.numel() == 0)) &&
                  hist.is_contiguous(),
              op, ": 'hist' must be a contiguous int64 tensor of 65536 bins",
              allow_empty ? " (or empty)" : "", ", got ", hist.scalar_type(),
              " of shape ", hist.sizes());
}

inline void check_select_state(const at::Tensor& s, const char* op) {
  TORCH_CHECK(s.scalar_type() == at::kLong && s.dim() == 1 && s.numel() == 4 &&
                  s.is_contiguous(),
              op, ": 'select_state' must be a contiguous int64 tensor of 4 "
              "elements, got ", s.scalar_type(), " of shape ", s.sizes());
}

}  // namespace cpu
}  // namespace mgpp_ext
