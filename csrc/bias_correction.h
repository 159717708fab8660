// AdamW's bias corrections, beta^step, computed the same on every machine.
//
// Why not std::pow: libm picks its pow by CPU features (glibc has an FMA
// variant), so beta^step may differ in its last bit between machines and
// then, rarely, step_size or bc2_sqrt rounds to another float. Squaring and
// multiplying doubles gives the same bits everywhere; the reference
// (mgpp_ext.reference.power) takes the same steps. Its error, under
// 2 log2(step) ulps of a double, vanishes when the result is rounded to
// fp32. Torch-free: the CUDA host code uses it too.
#pragma once

#include <cstdint>

namespace mgpp_ext {

// base^exponent for exponent >= 0, by binary exponentiation from the
// lowest bit up.
inline double power(double base, int64_t exponent) {
  double result = 1.0;
  while (exponent > 0) {
    if (exponent & 1) result *= base;
    base *= base;
    exponent >>= 1;
  }
  return result;
}

}  // namespace mgpp_ext
