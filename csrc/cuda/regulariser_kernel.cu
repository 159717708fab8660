// The ADMM and SR-STE kernels: AdamW (adamw_rn.cuh) with the family's
// gradient term, ADMM's projections onto n:m or a threshold with Z and U
// held as one fp32 tensor plus a packed bit mask, and SR-STE's step that
// recomputes the n:m mask of the updated dense weights.
//
// The arithmetic is the CPU kernels' and the reference's, operation for
// operation (the _rn intrinsics), and the n:m rule is nm_select.h's, so a
// GPU result is bitwise the CPU one. Why torch-free: so that nvcc can
// compile-check it without torch's CUDA headers
// (scripts/compile_check_cuda.sh).
#include "regulariser_kernel.cuh"

#include "../nm_select.h"
#include "adamw_rn.cuh"
#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // the grid strides past this

dim3 grid_for(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (blocks < 1) blocks = 1;
  return dim3(static_cast<unsigned>(blocks));
}

__device__ __forceinline__ int64_t first_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_stride() { return int64_t(gridDim.x) * blockDim.x; }

__device__ __forceinline__ bool bit_of(const uint8_t* bits, int64_t i) {
  return ((bits[i >> 3] >> (i & 7)) & 1u) != 0u;
}

__device__ __forceinline__ bool gate_closed(const StepScalars& s) {
  return s.apply_if != nullptr && !*s.apply_if;
}

// ADMM's gradient term: g + rho ((W - Z) + U), Z = A where the mask bit is
// set and 0 elsewhere, U = A where it is clear and 0 elsewhere.
struct AdmmTerm {
  float rho;
  __device__ __forceinline__ float operator()(const RegTensor& t, int64_t i, float p,
                                              float g) const {
    const float a = t.dual[i];
    const bool keep = bit_of(t.dual_mask, i);
    const float z = keep ? a : 0.0f;
    const float u = keep ? 0.0f : a;
    return __fadd_rn(g, __fmul_rn(rho, __fadd_rn(__fsub_rn(p, z), u)));
  }
};

// Movement: g unchanged; S <- S - score_lr (g W) with W before the update
// (each product rounded on its own, as the CPU kernel and the reference).
struct MovementTerm {
  float score_lr;
  __device__ __forceinline__ float operator()(const RegTensor& t, int64_t i, float p,
                                              float g) const {
    t.score[i] = __fsub_rn(t.score[i], __fmul_rn(score_lr, __fmul_rn(g, p)));
    return g;
  }
};

// One grid-stride AdamW pass over a tensor: g' = term(t, i, W, g), then
// AdamW. The families whose term needs only the element's index share it,
// as the CPU steps share flat_adamw_pass.h, so their loops cannot drift
// apart.
template <class P, class S, class Term>
__global__ void __launch_bounds__(kThreads)
    adamw_term_kernel(RegTensor t, StepScalars s, Term term) {
  if (gate_closed(s)) return;
  P* p = static_cast<P*>(t.param);
  const P* g = static_cast<const P*>(t.grad);
  S* m = static_cast<S*>(t.exp_avg);
  S* v = static_cast<S*>(t.exp_avg_sq);
  for (int64_t i = first_index(); i < t.numel; i += grid_stride()) {
    float pf = widen(p[i]), mf = widen(m[i]), vf = widen(v[i]);
    const float gf = term(t, i, pf, widen(g[i]));
    adamw_rn(pf, gf, mf, vf, s);
    p[i] = narrow<P>(pf);
    m[i] = narrow<S>(mf);
    v[i] = narrow<S>(vf);
  }
}

template <class P>
__global__ void __launch_bounds__(kThreads) admm_combine_kernel(RegTensor t) {
  const P* w = static_cast<const P*>(t.param);
  for (int64_t i = first_index(); i < t.numel; i += grid_stride()) {
    const float u = bit_of(t.dual_mask, i) ? 0.0f : t.dual[i];
    t.dual[i] = __fadd_rn(widen(w[i]), u);
  }
}

// One thread per mask byte: for each of its eight elements, the keep
// decision of the element's group (keys of the group's |A|), as bit j.
// Bits past numel stay clear.
template <int M>
__global__ void __launch_bounds__(kThreads) admm_nm_bits_kernel(RegTensor t, int n, int m_rt) {
  const int m = M > 0 ? M : m_rt;
  constexpr int kKeys = M > 0 ? M : nm::kMaxM;
  const int64_t bytes = (t.numel + 7) / 8;
  for (int64_t b = first_index(); b < bytes; b += grid_stride()) {
    uint32_t out = 0;
    // A byte's 8 entries lie in 8 / m groups when the groups run along
    // contiguous memory (one for m >= 8): each group is selected once and
    // its keep bits reused, not once per entry.
    int64_t last_base = -1;
    uint32_t keep = 0;
    for (int j = 0; j < 8; ++j) {
      const int64_t e = b * 8 + j;
      if (e >= t.numel) break;
      const int64_t q = e % t.inner;
      const int64_t od = e / t.inner;
      const int64_t d = od % t.size;
      const int r = static_cast<int>(d % m);
      const int64_t base = (od - r) * t.inner + q;  // entry 0 of e's group
      if (base != last_base) {
        int32_t k[kKeys];
#pragma unroll
        for (int i = 0; i < (M > 0 ? M : m); ++i) k[i] = nm::abs_key(t.dual[base + i * t.inner]);
        if constexpr (M > 0) {
          keep = nm::keep_mask<M>(k, n);
        } else {
          keep = nm::keep_mask(k, m, n);
        }
        last_base = base;
      }
      out |= ((keep >> r) & 1u) << j;
    }
    t.dual_mask[b] = static_cast<uint8_t>(out);
  }
}

__global__ void __launch_bounds__(kThreads)
    admm_threshold_kernel(RegTensor t, const int64_t* select_state) {
  const float tau = __uint_as_float(static_cast<uint32_t>(select_state[2]));
  const int64_t bytes = (t.numel + 7) / 8;
  for (int64_t b = first_index(); b < bytes; b += grid_stride()) {
    uint32_t out = 0;
    for (int j = 0; j < 8 && b * 8 + j < t.numel; ++j) {
      out |= uint32_t(fabsf(t.dual[b * 8 + j]) > tau) << j;
    }
    t.dual_mask[b] = static_cast<uint8_t>(out);
  }
}

// SR-STE's step of one element with the mask fixed: returns the stored W.
template <class P, class S>
__device__ __forceinline__ P srste_element(const RegTensor& t, int64_t e, bool keep,
                                           const StepScalars& s, float lambda_w) {
  P* w = static_cast<P*>(t.dense);
  S* m = static_cast<S*>(t.exp_avg);
  S* v = static_cast<S*>(t.exp_avg_sq);
  float pf = widen(w[e]), mf = widen(m[e]), vf = widen(v[e]);
  float gf = widen(static_cast<const P*>(t.grad)[e]);
  if (!keep) gf = __fadd_rn(gf, __fmul_rn(lambda_w, pf));
  adamw_rn(pf, gf, mf, vf, s);
  const P stored = narrow<P>(pf);
  w[e] = stored;
  m[e] = narrow<S>(mf);
  v[e] = narrow<S>(vf);
  return stored;
}

template <class P, class S>
__global__ void __launch_bounds__(kThreads)
    srste_fixed_kernel(RegTensor t, StepScalars s, float lambda_w) {
  if (gate_closed(s)) return;
  P* out = static_cast<P*>(t.param);
  for (int64_t i = first_index(); i < t.numel; i += grid_stride()) {
    const bool keep = t.mask[i];
    const P stored = srste_element<P, S>(t, i, keep, s, lambda_w);
    out[i] = keep ? stored : narrow<P>(0.0f);
  }
}

// One thread per group: step its m elements (the old mask's term), key the
// stored |W|, decide, write M and W M. Neighbouring threads take
// neighbouring groups, so a strided layout's loads are coalesced.
template <int M, class P, class S>
__global__ void __launch_bounds__(kThreads)
    srste_group_kernel(RegTensor t, StepScalars s, float lambda_w, int n, int m_rt,
                       int64_t num_groups) {
  if (gate_closed(s)) return;
  const int m = M > 0 ? M : m_rt;
  constexpr int kKeys = M > 0 ? M : nm::kMaxM;
  P* out = static_cast<P*>(t.param);
  for (int64_t tg = first_index(); tg < num_groups; tg += grid_stride()) {
    const int64_t q = t.inner == 1 ? 0 : tg % t.inner;
    const int64_t row_block = t.inner == 1 ? tg : tg / t.inner;
    const int64_t base = row_block * m * t.inner + q;
    int32_t k[kKeys];
    P stored[kKeys];
#pragma unroll
    for (int r = 0; r < (M > 0 ? M : m); ++r) {
      const int64_t e = base + r * t.inner;
      stored[r] = srste_element<P, S>(t, e, t.mask[e], s, lambda_w);
      k[r] = nm::abs_key(widen(stored[r]));
    }
    uint32_t keep;
    if constexpr (M > 0) {
      keep = nm::keep_mask<M>(k, n);
    } else {
      keep = nm::keep_mask(k, m, n);
    }
#pragma unroll
    for (int r = 0; r < (M > 0 ? M : m); ++r) {
      const int64_t e = base + r * t.inner;
      const bool kr = ((keep >> r) & 1u) != 0u;
      t.mask[e] = kr;
      out[e] = kr ? stored[r] : narrow<P>(0.0f);
    }
  }
}

// f(P{}, S{}) for the supported (param, state) dtype pairs; false otherwise.
template <class F>
bool dispatch_pair(DType p, DType s, const F& f) {
  if (p == DType::F32 && s == DType::F32) return f(float{}, float{}), true;
  if (p == DType::BF16 && s == DType::BF16) return f(__nv_bfloat16{}, __nv_bfloat16{}), true;
  if (p == DType::BF16 && s == DType::F32) return f(__nv_bfloat16{}, float{}), true;
  if (p == DType::F16 && s == DType::F16) return f(__half{}, __half{}), true;
  if (p == DType::F16 && s == DType::F32) return f(__half{}, float{}), true;
  return false;
}

template <class F>
bool dispatch_one(DType p, const F& f) {
  return dispatch_pair(p, p, [&](auto tag, auto) { f(tag); });
}

template <class P, class S, int M>
void launch_groups(const RegTensor& t, const StepScalars& sc, float lambda_w, int n, int m,
                   int64_t groups, cudaStream_t stream) {
  srste_group_kernel<M, P, S><<<grid_for(groups), kThreads, 0, stream>>>(t, sc, lambda_w, n, m,
                                                                         groups);
}

template <class Term>
cudaError_t launch_adamw_term(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                              const Term& term, cudaStream_t stream) {
  if (t.numel == 0) return cudaSuccess;
  const bool ok = dispatch_pair(p, s, [&](auto p_tag, auto s_tag) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    adamw_term_kernel<P, S, Term><<<grid_for(t.numel), kThreads, 0, stream>>>(t, sc, term);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_admm_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                             float rho, cudaStream_t stream) {
  return launch_adamw_term(t, p, s, sc, AdmmTerm{rho}, stream);
}

cudaError_t launch_movement_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                                 float score_lr, cudaStream_t stream) {
  return launch_adamw_term(t, p, s, sc, MovementTerm{score_lr}, stream);
}

cudaError_t launch_admm_combine(const RegTensor& t, DType p, cudaStream_t stream) {
  if (t.numel == 0) return cudaSuccess;
  const bool ok = dispatch_one(p, [&](auto p_tag) {
    using P = decltype(p_tag);
    admm_combine_kernel<P><<<grid_for(t.numel), kThreads, 0, stream>>>(t);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_admm_project(const RegTensor& t, DType p, int n, int m, cudaStream_t stream) {
  if (t.numel == 0) return cudaSuccess;
  const cudaError_t err = launch_admm_combine(t, p, stream);
  if (err != cudaSuccess) return err;
  const dim3 grid = grid_for((t.numel + 7) / 8);
  switch (m) {
    case 2: admm_nm_bits_kernel<2><<<grid, kThreads, 0, stream>>>(t, n, m); break;
    case 4: admm_nm_bits_kernel<4><<<grid, kThreads, 0, stream>>>(t, n, m); break;
    case 8: admm_nm_bits_kernel<8><<<grid, kThreads, 0, stream>>>(t, n, m); break;
    case 16: admm_nm_bits_kernel<16><<<grid, kThreads, 0, stream>>>(t, n, m); break;
    case 32: admm_nm_bits_kernel<32><<<grid, kThreads, 0, stream>>>(t, n, m); break;
    default: admm_nm_bits_kernel<0><<<grid, kThreads, 0, stream>>>(t, n, m); break;
  }
  return cudaGetLastError();
}

cudaError_t launch_admm_threshold_mask(const RegTensor& t, const int64_t* select_state,
                                       cudaStream_t stream) {
  if (t.numel == 0) return cudaSuccess;
  admm_threshold_kernel<<<grid_for((t.numel + 7) / 8), kThreads, 0, stream>>>(t, select_state);
  return cudaGetLastError();
}

cudaError_t launch_srste_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                              float lambda_w, int n, int m, bool update_mask,
                              cudaStream_t stream) {
  if (t.numel == 0) return cudaSuccess;
  const bool ok = dispatch_pair(p, s, [&](auto p_tag, auto s_tag) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    if (!update_mask) {
      srste_fixed_kernel<P, S><<<grid_for(t.numel), kThreads, 0, stream>>>(t, sc, lambda_w);
      return;
    }
    const int64_t groups = t.numel / m;
    switch (m) {
      case 2: launch_groups<P, S, 2>(t, sc, lambda_w, n, m, groups, stream); break;
      case 4: launch_groups<P, S, 4>(t, sc, lambda_w, n, m, groups, stream); break;
      case 8: launch_groups<P, S, 8>(t, sc, lambda_w, n, m, groups, stream); break;
      case 16: launch_groups<P, S, 16>(t, sc, lambda_w, n, m, groups, stream); break;
      case 32: launch_groups<P, S, 32>(t, sc, lambda_w, n, m, groups, stream); break;
      default: launch_groups<P, S, 0>(t, sc, lambda_w, n, m, groups, stream); break;
    }
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace mgpp_ext::cuda_kernels
