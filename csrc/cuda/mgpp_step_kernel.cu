// The fused MGPP step: prior gradient + AdamW (+ fixed mask) (+ level-0
// histogram of the updated |param|), many parameters per launch.
//
// Why fused: the step is memory bound; reading p, g, m, v once and writing
// p, m, v once is the minimum traffic, and the histogram that a pruning
// event needs is taken from the values just stored instead of a second pass
// over the weights. Why torch-free: so that nvcc can compile-check it
// without torch's CUDA headers (scripts/compile_check_cuda.sh).
#include "mgpp_step_kernel.cuh"

#include <cmath>

#include "../bias_correction.h"
#include "../exp_fp32.h"
#include "adamw_rn.cuh"
#include "dtype.cuh"
#include "hist_block.cuh"
#include "multi_tensor.cuh"

namespace mgpp_ext::cuda_kernels {

StepScalars make_step_scalars(const StepHyper& hp) {
  StepScalars s{};
  s.apply_prior = hp.apply_prior ? 1 : 0;
  if (hp.apply_prior) {
    s.c1 = static_cast<float>(std::log(hp.lambda_mix) - std::log1p(-hp.lambda_mix) +
                              0.5 * std::log(hp.sigma0_sq) -
                              0.5 * std::log(hp.sigma1_sq));
    s.c2 = static_cast<float>(0.5 / hp.sigma0_sq - 0.5 / hp.sigma1_sq);
    s.inv_s0 = static_cast<float>(1.0 / hp.sigma0_sq);
    s.inv_s1 = static_cast<float>(1.0 / hp.sigma1_sq);
    s.inv_n = static_cast<float>(1.0 / hp.num_examples);
  }
  s.decay = static_cast<float>(1.0 - hp.lr * hp.weight_decay);
  s.b1 = static_cast<float>(hp.beta1);
  s.omb1 = static_cast<float>(1.0 - hp.beta1);
  s.b2 = static_cast<float>(hp.beta2);
  s.omb2 = static_cast<float>(1.0 - hp.beta2);
  s.eps = static_cast<float>(hp.eps);
  s.step_size = static_cast<float>(hp.lr / (1.0 - power(hp.beta1, hp.step)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - power(hp.beta2, hp.step)));
  s.hist_lo = static_cast<uint32_t>(hp.hist_lo);
  s.hist_hi = static_cast<uint32_t>(hp.hist_hi);
  s.hist1 = reinterpret_cast<unsigned long long*>(hp.hist1);
  s.hist1_lo = static_cast<uint32_t>(hp.hist1_lo);
  s.hist1_n = hp.hist1 != nullptr ? static_cast<uint32_t>(hp.hist1_n) : 0u;
  s.apply_if = hp.apply_if;
  return s;
}

namespace {

// One element, all in fp32. Every operation is rounded on its own, in the
// order of the formula (the _rn intrinsics forbid FMA contraction and
// survive --use_fast_math), and exp is exp_fp32.h's, so the result is
// bitwise the CPU kernel's and the reference's.
// exp overflowing to +inf gives p0 = 1/(1+inf) = 0, never NaN.
__device__ __forceinline__ void mgpp_update(float& p, float g, float& m,
                                            float& v, const StepScalars& s) {
  if (s.apply_prior) {
    const float e = exp_fp32::exp(__fadd_rn(s.c1, __fmul_rn(s.c2, __fmul_rn(p, p))));
    const float p0 = __fdiv_rn(1.0f, __fadd_rn(1.0f, e));
    const float pull = __fadd_rn(__fmul_rn(p0, s.inv_s0),
                                 __fmul_rn(__fsub_rn(1.0f, p0), s.inv_s1));
    g = __fadd_rn(g, __fmul_rn(__fmul_rn(p, s.inv_n), pull));
  }
  adamw_rn(p, g, m, v, s);
}

// The level-0 key of a stored |param|, clamped to the histogram window.
__device__ __forceinline__ uint32_t window_key(float stored, const StepScalars& s) {
  const uint32_t key = abs_bits(stored) >> 16;
  return key < s.hist_lo ? s.hist_lo : (key > s.hist_hi ? s.hist_hi : key);
}

// The level-1 count of a stored |param| whose key is a predicted boundary
// bin. Such elements are a small fraction, so global atomics suffice.
__device__ __forceinline__ void level1_add(float stored, const StepScalars& s) {
  const uint32_t bits = abs_bits(stored);
  const uint32_t d = (bits >> 16) - s.hist1_lo;
  if (d < s.hist1_n) {
    atomicAdd(s.hist1 + ((static_cast<size_t>(d) << 16) | (bits & 0xffffu)), 1ull);
  }
}

// Lists: 0 params (P), 1 grads (P), 2 exp_avgs (S), 3 exp_avg_sqs (S),
// 4 masks (bool bytes, only when kMasked).
template <class P, class S, bool kMasked, HistMode H>
__global__ void __launch_bounds__(kBlockSize)
    mgpp_step_kernel(TensorListMeta<kMasked ? 5 : 4> meta, StepScalars s,
                     int64_t* hist) {
  const ChunkView c = chunk_of_block(meta);
  // A gated-off step: the whole block leaves before it writes anything
  // (uniform across the block, so no barrier is skipped by some threads),
  // counting its elements in bin hist_lo so that an event's select chained
  // on the histogram stays well defined (see the op's schema).
  if (s.apply_if != nullptr && !*s.apply_if) {
    if constexpr (H != HistMode::kNone) {
      if (threadIdx.x == 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(hist) + s.hist_lo,
                  static_cast<unsigned long long>(c.len));
      }
    }
    return;
  }
  P* __restrict__ p = chunk_ptr<P>(meta.ptr[0][c.tensor], c);
  const P* __restrict__ g = chunk_ptr<const P>(meta.ptr[1][c.tensor], c);
  S* __restrict__ m = chunk_ptr<S>(meta.ptr[2][c.tensor], c);
  S* __restrict__ v = chunk_ptr<S>(meta.ptr[3][c.tensor], c);
  const uint8_t* __restrict__ mask = nullptr;
  if constexpr (kMasked) mask = chunk_ptr<const uint8_t>(meta.ptr[4][c.tensor], c);

  BlockHist<H, kLevel0Keys> acc(hist);
  int done = 0;
  if (c.vec_ok) {
    const int nvec = c.len / kVecElems;
    for (int i = threadIdx.x; i < nvec; i += kBlockSize) {
      const int e = i * kVecElems;
      float pv[4], gv[4], mv[4], vv[4];
      load4(p + e, pv);
      load4(g + e, gv);
      load4(m + e, mv);
      load4(v + e, vv);
      uint32_t keep = 0;
      if constexpr (kMasked) keep = load_mask4(mask + e);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        mgpp_update(pv[j], gv[j], mv[j], vv[j], s);
        if constexpr (kMasked) {
          if (!mask_bit(keep, j)) pv[j] = 0.0f;
        }
        pv[j] = as_stored<P>(pv[j]);
      }
      store4(p + e, pv);
      store4(m + e, mv);
      store4(v + e, vv);
      if constexpr (H != HistMode::kNone) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc.add(window_key(pv[j], s), e + j);
          level1_add(pv[j], s);
        }
      }
    }
    done = nvec * kVecElems;
  }
  // Unaligned tensors, and the last len % 4 elements of aligned ones.
  for (int i = done + threadIdx.x; i < c.len; i += kBlockSize) {
    float pi = widen(p[i]);
    float mi = widen(m[i]);
    float vi = widen(v[i]);
    mgpp_update(pi, widen(g[i]), mi, vi, s);
    if constexpr (kMasked) {
      if (mask[i] == 0) pi = 0.0f;
    }
    const P stored = narrow<P>(pi);
    p[i] = stored;
    m[i] = narrow<S>(mi);
    v[i] = narrow<S>(vi);
    if constexpr (H != HistMode::kNone) {
      acc.add(window_key(widen(stored), s), i);
      level1_add(widen(stored), s);
    }
  }
  acc.flush();
}

template <class P, class S, bool kMasked>
cudaError_t launch_typed(const StepTensorTable& t, const StepScalars& s,
                         int64_t* hist, cudaStream_t stream) {
  constexpr int kDepth = kMasked ? 5 : 4;
  int elem_bytes[kDepth];
  for (int d = 0; d < kDepth; ++d) {
    elem_bytes[d] = d < 2 ? int(sizeof(P)) : d < 4 ? int(sizeof(S)) : 1;
  }
  auto ptr_of = [&t](int64_t i, int d) -> const void* {
    switch (d) {
      case 0: return t.params[i];
      case 1: return t.grads[i];
      case 2: return t.exp_avgs[i];
      case 3: return t.exp_avg_sqs[i];
      default: return t.masks[i];
    }
  };
  auto every = [](int64_t) { return true; };
  auto run = [&](auto kernel, size_t smem, int max_blocks) {
    return for_each_launch<kDepth>(
        t.num_tensors, t.numels, elem_bytes, max_blocks, ptr_of, every,
        [&](const TensorListMeta<kDepth>& meta, int blocks) {
          kernel<<<blocks, kBlockSize, smem, stream>>>(meta, s, hist);
          return cudaGetLastError();
        });
  };
  if (hist == nullptr) {
    return run(mgpp_step_kernel<P, S, kMasked, HistMode::kNone>, 0,
               kMaxBlocksPerLaunch);
  }
  HistLaunchConfig cfg;
  const cudaError_t err = hist_launch_config(
      mgpp_step_kernel<P, S, kMasked, HistMode::kShared>, kLevel0Keys, &cfg);
  if (err != cudaSuccess) return err;
  if (cfg.mode == HistMode::kShared) {
    return run(mgpp_step_kernel<P, S, kMasked, HistMode::kShared>,
               cfg.smem_bytes, cfg.max_blocks);
  }
  return run(mgpp_step_kernel<P, S, kMasked, HistMode::kGlobal>, 0,
             kMaxBlocksPerLaunch);
}

template <class P, class S>
cudaError_t launch_masked_or_not(const StepTensorTable& t,
                                 const StepScalars& s, int64_t* hist,
                                 cudaStream_t stream) {
  return t.masks != nullptr ? launch_typed<P, S, true>(t, s, hist, stream)
                            : launch_typed<P, S, false>(t, s, hist, stream);
}

}  // namespace

cudaError_t launch_mgpp_step(const StepTensorTable& table, const StepHyper& hp,
                             int64_t* hist_or_null, cudaStream_t stream) {
  if (table.num_tensors <= 0) return cudaSuccess;
  const StepScalars s = make_step_scalars(hp);
  const DType st = table.state_dtype;
  switch (table.param_dtype) {
    case DType::F32:
      if (st == DType::F32) {
        return launch_masked_or_not<float, float>(table, s, hist_or_null, stream);
      }
      break;
    case DType::BF16:
      if (st == DType::BF16) {
        return launch_masked_or_not<__nv_bfloat16, __nv_bfloat16>(
            table, s, hist_or_null, stream);
      }
      if (st == DType::F32) {
        return launch_masked_or_not<__nv_bfloat16, float>(table, s,
                                                          hist_or_null, stream);
      }
      break;
    case DType::F16:
      if (st == DType::F16) {
        return launch_masked_or_not<__half, __half>(table, s, hist_or_null,
                                                    stream);
      }
      if (st == DType::F32) {
        return launch_masked_or_not<__half, float>(table, s, hist_or_null,
                                                   stream);
      }
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace mgpp_ext::cuda_kernels
