// The N:M selection rule, shared by the CPU and CUDA kernels (torch-free, so
// that plain nvcc compiles it).
//
// In a group of m scores, entry i is kept iff fewer than n entries beat it,
// where j beats i when s_j > s_i, or s_j == s_i and j < i (the lower index
// wins a tie). Scores compare as fp32 values with NaN above +inf (as
// torch.topk orders them), every NaN equal to every other, and -0.0 equal to
// +0.0. Exactly n entries of every group are kept.
//
// Why integer keys: the comparisons run on an int32 key per score that
// orders exactly like that rule, so the hot loops are integer compares
// (branch-free, vectorisable, no NaN special cases). For fp32 bits b with
// a = b & 0x7fffffff:
//   score key: a > 0x7f800000 (NaN) -> INT32_MAX, else (b negative ? -a : a)
//   |score| key: a > 0x7f800000 (NaN) -> 0x7f800001, else a
// Both are monotone in the value (the magnitude of a non-NaN float grows
// with a), -0.0 and +0.0 both give 0, and every NaN payload maps to one key.
// bf16 and fp16 are widened to fp32 exactly first.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MGPP_NM_HD __host__ __device__ __forceinline__
#else
#define MGPP_NM_HD inline
#endif
// Full unrolling of the fixed-size loops, in nvcc's device pass and in GCC
// (each compiler warns about the other's pragma; nvcc's host pass gets none).
#if defined(__CUDA_ARCH__)
#define MGPP_NM_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define MGPP_NM_UNROLL
#elif defined(__GNUC__) && !defined(__clang__)
#define MGPP_NM_UNROLL _Pragma("GCC unroll 32")
#else
#define MGPP_NM_UNROLL
#endif

namespace mgpp_ext {
namespace nm {

// The widest group: a keep mask fits in 32 bits.
constexpr int kMaxM = 32;
constexpr int32_t kNanScoreKey = 0x7fffffff;
constexpr int32_t kNanAbsKey = 0x7f800001;  // one above +inf
constexpr int32_t kInfBits = 0x7f800000;

MGPP_NM_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
#endif
}

MGPP_NM_HD int32_t score_key(float x) {
  const uint32_t b = float_bits(x);
  const int32_t a = static_cast<int32_t>(b & 0x7fffffffu);
  if (a > kInfBits) return kNanScoreKey;
  return (b >> 31) ? -a : a;
}

MGPP_NM_HD int32_t abs_key(float x) {
  const int32_t a = static_cast<int32_t>(float_bits(x) & 0x7fffffffu);
  return a > kInfBits ? kNanAbsKey : a;
}

// Bit i of the result is set iff entry i of the group is kept.
//
// Count of entries beating i: #{j < i : k_j >= k_i} + #{j > i : k_j > k_i}
//   = i - #{j < i : k_i > k_j} + #{j > i : k_j > k_i},
// so one compare per unordered pair (j < i) settles both entries: starting
// from beaten[i] = i, a pair where i is strictly larger moves one count
// from i to j.
template <int M>
MGPP_NM_HD uint32_t keep_mask(const int32_t (&k)[M], int n) {
  static_assert(M >= 2 && M <= kMaxM, "group size out of range");
  int beaten[M];
MGPP_NM_UNROLL
  for (int i = 0; i < M; ++i) beaten[i] = i;
MGPP_NM_UNROLL
  for (int i = 1; i < M; ++i) {
MGPP_NM_UNROLL
    for (int j = 0; j < i; ++j) {
      const int g = k[i] > k[j];
      beaten[i] -= g;
      beaten[j] += g;
    }
  }
  uint32_t keep = 0;
MGPP_NM_UNROLL
  for (int i = 0; i < M; ++i) keep |= static_cast<uint32_t>(beaten[i] < n) << i;
  return keep;
}

// Any m in [2, kMaxM], decided per entry (no per-group array of counts).
MGPP_NM_HD uint32_t keep_mask(const int32_t* k, int m, int n) {
  uint32_t keep = 0;
  for (int i = 0; i < m; ++i) {
    int beaten = 0;
    for (int j = 0; j < i; ++j) beaten += k[j] >= k[i];
    for (int j = i + 1; j < m; ++j) beaten += k[j] > k[i];
    keep |= static_cast<uint32_t>(beaten < n) << i;
  }
  return keep;
}

}  // namespace nm
}  // namespace mgpp_ext
