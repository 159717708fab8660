// AdamW on one fp32 element, given the gradient after the family's term,
// shared by the CUDA steps (mgpp_step_kernel.cu, regulariser_kernel.cu).
//
// Every operation is rounded on its own, in the order of
// mgpp_ext/reference.py (the _rn intrinsics forbid FMA contraction and survive
// --use_fast_math), so the result is bitwise the CPU kernels' and the
// reference's. C: any struct with the fp32 constants decay, b1, omb1, b2,
// omb2, eps, step_size and bc2_sqrt (StepScalars).
#pragma once

#include <cuda_runtime.h>

namespace mgpp_ext::cuda_kernels {

template <class C>
__device__ __forceinline__ void adamw_rn(float& p, float g, float& m, float& v, const C& s) {
  p = __fmul_rn(p, s.decay);
  m = __fadd_rn(__fmul_rn(s.b1, m), __fmul_rn(s.omb1, g));
  v = __fadd_rn(__fmul_rn(s.b2, v), __fmul_rn(s.omb2, __fmul_rn(g, g)));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}

}  // namespace mgpp_ext::cuda_kernels
