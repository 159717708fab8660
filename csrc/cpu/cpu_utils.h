// Helpers shared by the CPU kernels: argument checks, fp32 widening of
// fp32/bf16/fp16 vectors, and the chunk table that lets one parallel_for
// cover many tensors of very different sizes.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "../threshold.h"

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

// Streaming (non-temporal) stores, for an output a kernel writes without
// reading it (SR-STE's W * M parameter). A plain store first reads the
// cache line it writes (read for ownership): a write-only fp32 output then
// costs 8 bytes of memory traffic per element, a streaming store 4. Only a
// vector-aligned address streams; any other takes a plain store. A kernel
// that streams calls stream_fence() before its parallel body returns, so
// the weakly ordered stores are visible when the op is.
#if defined(CPU_CAPABILITY_AVX512)
constexpr uintptr_t kStreamAlign = 64;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr uintptr_t kStreamAlign = 32;
#else
constexpr uintptr_t kStreamAlign = 0;  // no streaming stores: plain ones everywhere
#endif

inline bool stream_aligned(const void* p) {
  return kStreamAlign != 0 && (reinterpret_cast<uintptr_t>(p) & (kStreamAlign - 1)) == 0;
}

// One fVec at p (fp32), streamed when p is aligned.
inline void stream1(float* p, const fVec& a) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stream_aligned(p)) return _mm512_stream_ps(p, a);
#elif defined(CPU_CAPABILITY_AVX2)
  if (stream_aligned(p)) return _mm256_stream_ps(p, a);
#endif
  a.store(p);
}

// store2, streamed when p is aligned.
template <typename T>
inline void stream2(T* p, const fVec& a, const fVec& b) {
  if constexpr (std::is_same_v<T, float>) {
    stream1(p, a);
    stream1(p + fVec::size(), b);
  } else {
    const Vectorized<T> h = at::vec::convert_from_float<T>(a, b);
#if defined(CPU_CAPABILITY_AVX512)
    if (stream_aligned(p)) return _mm512_stream_si512(reinterpret_cast<__m512i*>(p), h);
#elif defined(CPU_CAPABILITY_AVX2)
    if (stream_aligned(p)) return _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
#endif
    h.store(p);
  }
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// kBlock bool mask bytes as two all-ones (keep) / all-zeros lane masks, to
// AND into the weights. The byte loop does not vectorise on its own, and it
// ran in every final-phase step.
inline void load_keep2(const bool* m, fVec& a, fVec& b) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i w0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  const __m512i w1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m + 16)));
  const __m512i zero = _mm512_setzero_si512();
  a = _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmpneq_epi32_mask(w0, zero)));
  b = _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmpneq_epi32_mask(w1, zero)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i w0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
  const __m256i w1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m + 8)));
  const __m256i zero = _mm256_setzero_si256();
  // 0 -> 0, 1 -> all ones: compare with zero, then invert.
  const __m256i ones = _mm256_set1_epi32(-1);
  a = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(w0, zero), ones));
  b = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(w1, zero), ones));
#else
  uint32_t bits[kBlock];
  for (int64_t j = 0; j < kBlock; ++j) bits[j] = m[j] ? ~0u : 0u;
  a = fVec::loadu(bits);
  b = fVec::loadu(bits + fVec::size());
#endif
}

// One vector of fVec::size() bool mask bytes as an all-ones (keep) /
// all-zeros lane mask (for the gradient terms, which see one vector at a
// time).
inline fVec load_keep1(const bool* m) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m)));
  return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmpneq_epi32_mask(w, _mm512_setzero_si512())));
#elif defined(CPU_CAPABILITY_AVX2)
  // Zero-extended bytes are >= 0, so one signed compare with 0 is "!= 0".
  const __m256i w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(w, _mm256_setzero_si256()));
#else
  uint32_t bits[fVec::size()];
  for (int64_t j = 0; j < fVec::size(); ++j) bits[j] = m[j] ? ~0u : 0u;
  return fVec::loadu(bits);
#endif
}

// Bit i of a packed mask (bit j of byte b is element 8 b + j). Relaxed
// atomic: a neighbouring unit of another thread may be updating the other
// bits of the same byte (see store_bits).
inline bool load_bit(const uint8_t* bits, int64_t i) {
  return (__atomic_load_n(bits + (i >> 3), __ATOMIC_RELAXED) >> (i & 7)) & 1;
}

// fVec::size() bits of a packed mask from element i (a multiple of 8) as
// all-ones / all-zeros lanes.
inline fVec load_bits_keep(const uint8_t* bits, int64_t i) {
  const uint8_t* b = bits + (i >> 3);
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 k = static_cast<__mmask16>(b[0] | (uint32_t(b[1]) << 8));
  return _mm512_castsi512_ps(_mm512_movm_epi32(k));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i v = _mm256_and_si256(_mm256_set1_epi32(b[0]), sel);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, sel));
#else
  uint32_t lanes[fVec::size()];
  for (int64_t j = 0; j < fVec::size(); ++j) lanes[j] = ((b[j >> 3] >> (j & 7)) & 1) ? ~0u : 0u;
  return fVec::loadu(lanes);
#endif
}

// Writes bits [offset, offset + len) of a packed mask from keep lanes (0 or
// -1). Bytes the range covers whole are stored; an edge byte is shared with
// a neighbouring range that another thread may be writing, so only its own
// bits change, atomically.
inline void store_bits(uint8_t* bits, int64_t offset, const int32_t* keep, int64_t len) {
  int64_t j = 0;
  while (j < len) {
    const int64_t e = offset + j;
    const int sh = int(e & 7);
    const int cnt = int(std::min<int64_t>(8 - sh, len - j));
    uint8_t* byte = bits + (e >> 3);
    if (cnt == 8) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      // The sign bits of eight 0 / -1 lanes are the byte.
      *byte = static_cast<uint8_t>(_mm256_movemask_ps(
          _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(keep + j)))));
#else
      uint32_t val = 0;
      for (int t = 0; t < 8; ++t) val |= uint32_t(keep[j + t] & 1) << t;
      *byte = static_cast<uint8_t>(val);
#endif
    } else {
      uint32_t val = 0;
      for (int t = 0; t < cnt; ++t) val |= uint32_t(keep[j + t] & 1) << (sh + t);
      const uint8_t own = static_cast<uint8_t>(((1u << cnt) - 1u) << sh);
      __atomic_fetch_and(byte, static_cast<uint8_t>(~own), __ATOMIC_RELAXED);
      __atomic_fetch_or(byte, static_cast<uint8_t>(val), __ATOMIC_RELAXED);
    }
    j += cnt;
  }
}

inline float float_of_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
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
    TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": '", name, "[", i,
                "]' must be a CPU tensor, got ", t.device());
    TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": '", name, "[", i,
                "]' must be a dense (strided) tensor, got ", t.layout());
    auto st = t.scalar_type();
    TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
                ": '", name, "[", i,
                "]' must be float32, bfloat16 or float16, got ", st);
  }
}

// masks[i] must be a CPU bool tensor shaped like tensors[i] (the final mask
// a kernel reads or writes next to tensors[i]).
inline void check_cpu_masks(at::TensorList masks, at::TensorList tensors, const char* op) {
  for (size_t i = 0; i < masks.size(); ++i) {
    TORCH_CHECK_TYPE(masks[i].scalar_type() == at::kBool, op, ": 'masks[", i,
                     "]' must be bool, got ", masks[i].scalar_type());
    TORCH_CHECK_VALUE(masks[i].sizes() == tensors[i].sizes() && masks[i].device().is_cpu(),
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
