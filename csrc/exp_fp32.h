// exp(x) in fp32 that rounds the same on every IEEE-754 machine: the CPU
// kernel's vector lanes and scalar tail, every CPU build (AVX-512, AVX2,
// generic, ARM), the CUDA kernel, and the plain-PyTorch reference
// (mgpp_ext.reference.exp_fp32, which repeats these steps op by op).
//
// Why not a library exp: torch.exp, Sleef, glibc's expf, CUDA's expf and
// Intel MKL (which torch calls for some float ops, with a different code
// path on non-Intel CPUs) each round differently in the last bit, and near
// the prior's spike/slab crossover one bit of p0 can flip the rounding of a
// bf16/fp16 weight. This function uses only +, -, * (each rounded once:
// built with -ffp-contract=off on the CPU and the _rn intrinsics on the
// GPU, so no fused multiply-add) and exact scaling by powers of two.
//
// Method (Cody-Waite, the Cephes expf polynomial): x = k ln2 + r with
// |r| <= ln2/2 and k an integer, exp(r) by a degree-7 polynomial,
// exp(x) = exp(r) 2^k. Error: under 1 ulp (0.96 measured over every 97th
// fp32 in [-104, 104]; python_tests/test_exp_fp32.py checks it against
// float64), so it is always one of the two floats around exp(x).
// x > 104 gives +inf, x < -104 gives 0, NaN gives NaN.
//
// Torch-free, so the CUDA kernels compile without torch's headers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MGPP_EXP_HD __host__ __device__ __forceinline__
#else
#define MGPP_EXP_HD inline
#endif

namespace mgpp_ext {
namespace exp_fp32 {

// Arguments are clamped to [-kMaxArg, kMaxArg] first: exp(104) overflows
// fp32 and exp(-104) rounds to 0, so the clamp changes no result, and it
// keeps k within [-150, 150], whose halves are normal powers of two.
constexpr float kMaxArg = 104.0f;
constexpr float kLog2e = 1.44269504088896341f;
// ln2 = kLn2Hi + kLn2Lo. kLn2Hi has 9 significant bits, so k * kLn2Hi is
// exact for |k| <= 150, and so is x - k * kLn2Hi (the two are within a
// factor of 2 of each other).
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
// 1.5 * 2^23: for |t| < 2^22, (t + kRound) rounds t to the nearest integer
// (ties to even), and the low bits of its bit pattern are that integer
// plus kRoundBits.
constexpr float kRound = 12582912.0f;
constexpr int32_t kRoundBits = 0x4B400000;
// exp(r) ~ 1 + r + r^2 (((((c0 r + c1) r + c2) r + c3) r + c4) r + c5)
constexpr float kC0 = 1.9875691500e-4f;
constexpr float kC1 = 1.3981999507e-3f;
constexpr float kC2 = 8.3334519073e-3f;
constexpr float kC3 = 4.1665795894e-2f;
constexpr float kC4 = 1.6666665459e-1f;
constexpr float kC5 = 5.0000001201e-1f;

MGPP_EXP_HD float from_bits(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

MGPP_EXP_HD int32_t to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  int32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
#endif
}

#if defined(__CUDA_ARCH__)
MGPP_EXP_HD float mul(float a, float b) { return __fmul_rn(a, b); }
MGPP_EXP_HD float add(float a, float b) { return __fadd_rn(a, b); }
MGPP_EXP_HD float sub(float a, float b) { return __fsub_rn(a, b); }
#else
// Plain operators: the CPU sources are compiled with -ffp-contract=off.
MGPP_EXP_HD float mul(float a, float b) { return a * b; }
MGPP_EXP_HD float add(float a, float b) { return a + b; }
MGPP_EXP_HD float sub(float a, float b) { return a - b; }
#endif

// The scalar form. The CPU vector form (csrc/cpu/exp_vec.h) takes the same
// steps in the same order.
MGPP_EXP_HD float exp(float x) {
  const bool nan = !(x == x);
  float xc = nan ? 0.0f : x;
  xc = xc < -kMaxArg ? -kMaxArg : xc;
  xc = xc > kMaxArg ? kMaxArg : xc;
  const float kr = add(mul(xc, kLog2e), kRound);
  const float k = sub(kr, kRound);
  float r = sub(xc, mul(k, kLn2Hi));
  r = sub(r, mul(k, kLn2Lo));
  const float r2 = mul(r, r);
  float q = add(mul(kC0, r), kC1);
  q = add(mul(q, r), kC2);
  q = add(mul(q, r), kC3);
  q = add(mul(q, r), kC4);
  q = add(mul(q, r), kC5);
  float y = add(mul(q, r2), r);
  y = add(y, 1.0f);
  // 2^k as two normal powers of two, so that results down to the
  // subnormals are formed by exact scalings (and one final rounding).
  const int32_t n = to_bits(kr) - kRoundBits;
  const int32_t n1 = n >> 1;  // arithmetic shift: floor(n / 2)
  const int32_t n2 = n - n1;
  y = mul(y, from_bits((n1 + 127) << 23));
  y = mul(y, from_bits((n2 + 127) << 23));
  return nan ? x : y;
}

}  // namespace exp_fp32
}  // namespace mgpp_ext
