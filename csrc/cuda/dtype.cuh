// Element types of the CUDA kernels and their fp32 widening.
//
// Why this file exists: the kernel sources are torch-free (raw pointers in,
// so that plain nvcc can compile-check them on a machine whose torch has no
// CUDA), hence they name dtypes with their own enum and the binding maps
// at::ScalarType onto it. Conversions go through the explicit cuda_fp16 /
// cuda_bf16 intrinsics because torch builds extensions with
// __CUDA_NO_HALF_CONVERSIONS__ and friends (no implicit conversions), and
// because the _rn forms round to nearest even, as the CPU kernels do.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mgpp_ext::cuda_kernels {

enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };

inline int dtype_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

template <class T>
struct Fp32;  // widening to / rounding from fp32, per element type

template <>
struct Fp32<float> {
  static __device__ __forceinline__ float widen(float x) { return x; }
  static __device__ __forceinline__ float round(float x) { return x; }
};

template <>
struct Fp32<__nv_bfloat16> {
  static __device__ __forceinline__ float widen(__nv_bfloat16 x) {
    return __bfloat162float(x);
  }
  static __device__ __forceinline__ __nv_bfloat16 round(float x) {
    return __float2bfloat16_rn(x);
  }
};

template <>
struct Fp32<__half> {
  static __device__ __forceinline__ float widen(__half x) {
    return __half2float(x);
  }
  static __device__ __forceinline__ __half round(float x) {
    return __float2half_rn(x);
  }
};

template <class T>
__device__ __forceinline__ float widen(T x) {
  return Fp32<T>::widen(x);
}

template <class T>
__device__ __forceinline__ T narrow(float x) {
  return Fp32<T>::round(x);
}

// x rounded to T and widened back: the value a store of x to T keeps.
template <class T>
__device__ __forceinline__ float as_stored(float x) {
  return widen(narrow<T>(x));
}

// Bit pattern of |x|: for non-negative floats it orders like the value
// (NaN above inf), which is what the radix select relies on.
__device__ __forceinline__ uint32_t abs_bits(float x) {
  return __float_as_uint(x) & 0x7fffffffu;
}

// Four consecutive elements as one aligned access: 16 bytes for fp32,
// 8 bytes for the 16-bit types.
template <class T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <class T>
__device__ __forceinline__ void load4(const T* p, float (&out)[4]) {
  const Pack4<T> pack = *reinterpret_cast<const Pack4<T>*>(p);
#pragma unroll
  for (int j = 0; j < 4; ++j) out[j] = widen(pack.v[j]);
}

template <class T>
__device__ __forceinline__ void store4(T* p, const float (&in)[4]) {
  Pack4<T> pack;
#pragma unroll
  for (int j = 0; j < 4; ++j) pack.v[j] = narrow<T>(in[j]);
  *reinterpret_cast<Pack4<T>*>(p) = pack;
}

// The four elements unconverted, for kernels that only zero some of them.
template <class T>
__device__ __forceinline__ Pack4<T> load_raw4(const T* p) {
  return *reinterpret_cast<const Pack4<T>*>(p);
}

template <class T>
__device__ __forceinline__ void store_raw4(T* p, const Pack4<T>& pack) {
  *reinterpret_cast<Pack4<T>*>(p) = pack;
}

// Four bool mask bytes as one 32-bit word (byte j is element j). Bool
// tensors hold 0 or 1, but any non-zero byte counts as true.
__device__ __forceinline__ uint32_t load_mask4(const uint8_t* m) {
  return *reinterpret_cast<const uint32_t*>(m);
}

__device__ __forceinline__ bool mask_bit(uint32_t word, int j) {
  return ((word >> (8 * j)) & 0xffu) != 0;
}

__device__ __forceinline__ void store_mask4(uint8_t* m, uint32_t word) {
  *reinterpret_cast<uint32_t*>(m) = word;
}

}  // namespace mgpp_ext::cuda_kernels
