// MGPP_VEC_INLINE / MGPP_LAMBDA_INLINE: forced inlining of the per-vector
// pieces of the CPU steps (the AdamW body, the gradient terms, the prior
// and its exp, SR-STE's block selection).
//
// Why forced: GCC kept the vector AdamW body an out-of-line call per vector,
// its operands passed through memory and its constants re-broadcast on every
// call, which made the steps compute-bound on AVX2. Why only in the vector
// builds: in the generic build at::vec's types are arrays worked by loops,
// and inlining all of them into every step doubles its compile time for no
// gain.
#pragma once

#include <c10/macros/Macros.h>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define MGPP_VEC_INLINE C10_ALWAYS_INLINE
// The same for a lambda (after its parameter list), which takes no inline.
#define MGPP_LAMBDA_INLINE __attribute__((__always_inline__))
#else
#define MGPP_VEC_INLINE inline
#define MGPP_LAMBDA_INLINE
#endif
