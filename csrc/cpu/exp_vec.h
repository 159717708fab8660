// The vector form of mgpp_ext::exp_fp32::exp (csrc/exp_fp32.h): the same
// steps in the same order on at::vec lanes, so that a weight gets the same
// bits whether it lands in a vector or in the scalar tail, and whichever
// at::vec implementation the build picked (AVX-512, AVX2, generic, NEON).
#pragma once

#include <ATen/cpu/vec/vec.h>
#include "vec_inline.h"

#include "../exp_fp32.h"

namespace mgpp_ext {
namespace cpu {

MGPP_VEC_INLINE at::vec::Vectorized<float> exp_fp32(const at::vec::Vectorized<float>& x) {
  using fV = at::vec::Vectorized<float>;
  using iV = at::vec::Vectorized<int32_t>;
  namespace e = mgpp_ext::exp_fp32;
  const fV nan = x != x;
  fV xc = fV::blendv(x, fV(0.0f), nan);
  xc = fV::blendv(xc, fV(-e::kMaxArg), xc < fV(-e::kMaxArg));
  xc = fV::blendv(xc, fV(e::kMaxArg), xc > fV(e::kMaxArg));
  const fV kr = xc * fV(e::kLog2e) + fV(e::kRound);
  const fV k = kr - fV(e::kRound);
  fV r = xc - k * fV(e::kLn2Hi);
  r = r - k * fV(e::kLn2Lo);
  const fV r2 = r * r;
  fV q = fV(e::kC0) * r + fV(e::kC1);
  q = q * r + fV(e::kC2);
  q = q * r + fV(e::kC3);
  q = q * r + fV(e::kC4);
  q = q * r + fV(e::kC5);
  fV y = q * r2 + r;
  y = y + fV(1.0f);
  const iV n = at::vec::cast<int32_t>(kr) - iV(e::kRoundBits);
  const iV n1 = n >> iV(1);
  const iV n2 = n - n1;
  y = y * at::vec::cast<float>((n1 + iV(127)) << iV(23));
  y = y * at::vec::cast<float>((n2 + iV(127)) << iV(23));
  return fV::blendv(y, x, nan);
}

MGPP_VEC_INLINE float exp_fp32(float x) { return mgpp_ext::exp_fp32::exp(x); }

}  // namespace cpu
}  // namespace mgpp_ext
