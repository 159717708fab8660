// Kernels of the exact global threshold: |x| histograms (multi-tensor,
// block-private shared counters, see hist_block.cuh), the single-block bin
// select, and the elementwise apply_threshold / apply_mask.
//
// Why this way: the k-th smallest |x| over all prunable weights is found
// with two 65536-bin histogram passes over the weights where they lie (no
// concatenation, sort or copy), and select_state never leaves the device.
// Why torch-free: so that nvcc can compile-check it without torch's CUDA
// headers (scripts/compile_check_cuda.sh).
#include "threshold_kernel.cuh"

#include "dtype.cuh"
#include "hist_block.cuh"
#include "multi_tensor.cuh"

namespace mgpp_ext::cuda_kernels {
namespace {

constexpr int kHistUnroll = 4;  // vector loads in flight per thread
constexpr int kSelectThreads = 1024;
constexpr int kBinsPerThread = kHistBins / kSelectThreads;

template <class T, int kLevel, HistMode H>
__global__ void __launch_bounds__(kBlockSize)
    abs_histogram_kernel(TensorListMeta<1> meta, const int64_t* select_state,
                         int64_t* hist) {
  constexpr int kKeys = kLevel == 0 ? kLevel0Keys : kHistBins;
  // As the CPU kernel reads them: the low 32 bits of the int64 entries.
  const uint32_t want_high = kLevel == 1 ? uint32_t(select_state[1]) : 0u;
  const ChunkView c = chunk_of_block(meta);
  const T* __restrict__ x = chunk_ptr<const T>(meta.ptr[0][c.tensor], c);

  BlockHist<H, kKeys> acc(hist);
  auto count = [&](float value, int index) {
    const uint32_t bits = abs_bits(value);
    if constexpr (kLevel == 0) {
      acc.add(bits >> 16, index);
    } else if ((bits >> 16) == want_high) {
      acc.add(bits & 0xffffu, index);
    }
  };

  int done = 0;
  if (c.vec_ok) {
    const int nvec = c.len / kVecElems;
    for (int i0 = threadIdx.x; i0 < nvec; i0 += kBlockSize * kHistUnroll) {
      float v[kHistUnroll][4];
#pragma unroll
      for (int u = 0; u < kHistUnroll; ++u) {
        const int i = i0 + u * kBlockSize;
        if (i < nvec) load4(x + i * kVecElems, v[u]);
      }
#pragma unroll
      for (int u = 0; u < kHistUnroll; ++u) {
        const int i = i0 + u * kBlockSize;
        if (i < nvec) {
#pragma unroll
          for (int j = 0; j < 4; ++j) count(v[u][j], i * kVecElems + j);
        }
      }
    }
    done = nvec * kVecElems;
  }
  for (int i = done + threadIdx.x; i < c.len; i += kBlockSize) {
    count(widen(x[i]), i);
  }
  acc.flush();
}

// Thread t owns bins [64t, 64t + 64); a block scan of the per-thread sums
// finds the one thread whose range holds the first bin with cumsum >= k,
// and that thread walks its bins. Callers keep 1 <= k <= total (the CPU
// kernel raises otherwise; a kernel cannot raise without a host sync):
// k <= 0 selects bin 0 (cumsum[0] >= k), k above the total the last bin.
__global__ void __launch_bounds__(kSelectThreads)
    select_bin_kernel(const int64_t* hist, int64_t* select_state, int level) {
  __shared__ int64_t warp_incl[kSelectThreads / 32];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t k = select_state[0];  // read by all before anyone writes
  const int64_t* h = hist + tid * kBinsPerThread;

  int64_t local = 0;
  for (int j = 0; j < kBinsPerThread; ++j) local += h[j];
  int64_t incl = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_incl[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int64_t w = warp_incl[lane];
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int64_t y = __shfl_up_sync(0xffffffffu, w, off);
      if (lane >= off) w += y;
    }
    warp_incl[lane] = w;
  }
  __syncthreads();
  if (warp > 0) incl += warp_incl[warp - 1];
  const int64_t excl = incl - local;
  const int64_t total = warp_incl[kSelectThreads / 32 - 1];

  bool mine;
  if (k <= 0) {
    mine = tid == 0;
  } else if (k > total) {
    mine = tid == kSelectThreads - 1;
  } else {
    mine = excl < k && k <= incl;
  }
  if (!mine) return;

  int j_sel = kBinsPerThread - 1;
  int64_t below = incl - h[kBinsPerThread - 1];
  int64_t run = excl;
  for (int j = 0; j < kBinsPerThread; ++j) {
    if (run + h[j] >= k) {
      j_sel = j;
      below = run;
      break;
    }
    run += h[j];
  }
  const int64_t bin = int64_t(tid) * kBinsPerThread + j_sel;
  if (level == 0) {
    select_state[1] = bin;
    select_state[0] = k - below;
    select_state[3] = h[j_sel];
  } else {
    select_state[2] = (select_state[1] << 16) | bin;
  }
}

// Stores only vectors that change, so that re-pruning mostly-zero weights
// costs reads, not writes. A pruned element becomes +0 of its dtype.
template <class T, bool kMasks>
__global__ void __launch_bounds__(kBlockSize)
    apply_threshold_kernel(TensorListMeta<kMasks ? 2 : 1> meta,
                           const int64_t* select_state) {
  const uint32_t tau = uint32_t(select_state[2]);  // as the CPU kernel reads it
  const ChunkView c = chunk_of_block(meta);
  T* __restrict__ x = chunk_ptr<T>(meta.ptr[0][c.tensor], c);
  uint8_t* __restrict__ mask = nullptr;
  if constexpr (kMasks) mask = chunk_ptr<uint8_t>(meta.ptr[1][c.tensor], c);
  const T zero = narrow<T>(0.0f);

  int done = 0;
  if (c.vec_ok) {
    const int nvec = c.len / kVecElems;
    for (int i = threadIdx.x; i < nvec; i += kBlockSize) {
      const int e = i * kVecElems;
      Pack4<T> pack = load_raw4(x + e);
      bool changed = false;
      uint32_t keep = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float f = widen(pack.v[j]);
        if (abs_bits(f) <= tau) {
          changed = changed || __float_as_uint(f) != 0u;
          pack.v[j] = zero;
        } else {
          keep |= 1u << (8 * j);
        }
      }
      if (changed) store_raw4(x + e, pack);
      if constexpr (kMasks) store_mask4(mask + e, keep);
    }
    done = nvec * kVecElems;
  }
  for (int i = done + threadIdx.x; i < c.len; i += kBlockSize) {
    const float f = widen(x[i]);
    const bool prune = abs_bits(f) <= tau;
    if (prune && __float_as_uint(f) != 0u) x[i] = zero;
    if constexpr (kMasks) mask[i] = prune ? 0 : 1;
  }
}

template <class T>
__global__ void __launch_bounds__(kBlockSize)
    apply_mask_kernel(TensorListMeta<2> meta) {
  const ChunkView c = chunk_of_block(meta);
  T* __restrict__ x = chunk_ptr<T>(meta.ptr[0][c.tensor], c);
  const uint8_t* __restrict__ mask =
      chunk_ptr<const uint8_t>(meta.ptr[1][c.tensor], c);
  const T zero = narrow<T>(0.0f);

  int done = 0;
  if (c.vec_ok) {
    const int nvec = c.len / kVecElems;
    for (int i = threadIdx.x; i < nvec; i += kBlockSize) {
      const int e = i * kVecElems;
      Pack4<T> pack = load_raw4(x + e);
      const uint32_t keep = load_mask4(mask + e);
      bool changed = false;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (!mask_bit(keep, j)) {
          changed = changed || __float_as_uint(widen(pack.v[j])) != 0u;
          pack.v[j] = zero;
        }
      }
      if (changed) store_raw4(x + e, pack);
    }
    done = nvec * kVecElems;
  }
  for (int i = done + threadIdx.x; i < c.len; i += kBlockSize) {
    if (mask[i] == 0 && __float_as_uint(widen(x[i])) != 0u) x[i] = zero;
  }
}

template <class T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<T>{}, dtype) once for each dtype present in the table.
template <class Fn>
cudaError_t for_each_dtype(const TensorTable& t, Fn&& fn) {
  bool present[3] = {false, false, false};
  for (int64_t i = 0; i < t.num_tensors; ++i) {
    const int d = static_cast<int>(t.dtypes[i]);
    if (d < 0 || d > 2) return cudaErrorInvalidValue;
    if (t.numels[i] > 0) present[d] = true;
  }
  cudaError_t err = cudaSuccess;
  if (present[0]) err = fn(Tag<float>{}, DType::F32);
  if (err == cudaSuccess && present[1]) err = fn(Tag<__nv_bfloat16>{}, DType::BF16);
  if (err == cudaSuccess && present[2]) err = fn(Tag<__half>{}, DType::F16);
  return err;
}

template <class T, int kLevel>
cudaError_t histogram_typed(const TensorTable& t, DType dt,
                            const int64_t* select_state, int64_t* hist,
                            cudaStream_t stream) {
  constexpr int kKeys = kLevel == 0 ? kLevel0Keys : kHistBins;
  const int elem_bytes[1] = {int(sizeof(T))};
  auto ptr_of = [&t](int64_t i, int) -> const void* { return t.data[i]; };
  auto selected = [&t, dt](int64_t i) { return t.dtypes[i] == dt; };
  auto run = [&](auto kernel, size_t smem, int max_blocks) {
    return for_each_launch<1>(
        t.num_tensors, t.numels, elem_bytes, max_blocks, ptr_of, selected,
        [&](const TensorListMeta<1>& meta, int blocks) {
          kernel<<<blocks, kBlockSize, smem, stream>>>(meta, select_state, hist);
          return cudaGetLastError();
        });
  };
  HistLaunchConfig cfg;
  const cudaError_t err = hist_launch_config(
      abs_histogram_kernel<T, kLevel, HistMode::kShared>, kKeys, &cfg);
  if (err != cudaSuccess) return err;
  if (cfg.mode == HistMode::kShared) {
    return run(abs_histogram_kernel<T, kLevel, HistMode::kShared>,
               cfg.smem_bytes, cfg.max_blocks);
  }
  return run(abs_histogram_kernel<T, kLevel, HistMode::kGlobal>, 0,
             kMaxBlocksPerLaunch);
}

template <class T, bool kMasks>
cudaError_t apply_threshold_typed(const TensorTable& t, DType dt,
                                  const int64_t* select_state,
                                  bool* const* masks, cudaStream_t stream) {
  constexpr int kDepth = kMasks ? 2 : 1;
  int elem_bytes[kDepth];
  elem_bytes[0] = int(sizeof(T));
  if constexpr (kMasks) elem_bytes[1] = 1;
  auto ptr_of = [&t, masks](int64_t i, int d) -> const void* {
    return d == 0 ? t.data[i] : static_cast<const void*>(masks[i]);
  };
  auto selected = [&t, dt](int64_t i) { return t.dtypes[i] == dt; };
  return for_each_launch<kDepth>(
      t.num_tensors, t.numels, elem_bytes, kMaxBlocksPerLaunch, ptr_of,
      selected, [&](const TensorListMeta<kDepth>& meta, int blocks) {
        apply_threshold_kernel<T, kMasks>
            <<<blocks, kBlockSize, 0, stream>>>(meta, select_state);
        return cudaGetLastError();
      });
}

template <class T>
cudaError_t apply_mask_typed(const TensorTable& t, DType dt,
                             const bool* const* masks, cudaStream_t stream) {
  const int elem_bytes[2] = {int(sizeof(T)), 1};
  auto ptr_of = [&t, masks](int64_t i, int d) -> const void* {
    return d == 0 ? t.data[i] : static_cast<const void*>(masks[i]);
  };
  auto selected = [&t, dt](int64_t i) { return t.dtypes[i] == dt; };
  return for_each_launch<2>(
      t.num_tensors, t.numels, elem_bytes, kMaxBlocksPerLaunch, ptr_of,
      selected, [&](const TensorListMeta<2>& meta, int blocks) {
        apply_mask_kernel<T><<<blocks, kBlockSize, 0, stream>>>(meta);
        return cudaGetLastError();
      });
}

}  // namespace

cudaError_t launch_abs_histogram(const TensorTable& tensors,
                                 const int64_t* select_state, int64_t* hist,
                                 int level, cudaStream_t stream) {
  if (level != 0 && level != 1) return cudaErrorInvalidValue;
  return for_each_dtype(tensors, [&](auto tag, DType dt) {
    using T = typename decltype(tag)::type;
    return level == 0
               ? histogram_typed<T, 0>(tensors, dt, select_state, hist, stream)
               : histogram_typed<T, 1>(tensors, dt, select_state, hist, stream);
  });
}

cudaError_t launch_select_bin(const int64_t* hist, int64_t* select_state,
                              int level, cudaStream_t stream) {
  if (level != 0 && level != 1) return cudaErrorInvalidValue;
  select_bin_kernel<<<1, kSelectThreads, 0, stream>>>(hist, select_state, level);
  return cudaGetLastError();
}

cudaError_t launch_apply_threshold(const TensorTable& tensors,
                                   const int64_t* select_state,
                                   bool* const* masks_or_null,
                                   cudaStream_t stream) {
  return for_each_dtype(tensors, [&](auto tag, DType dt) {
    using T = typename decltype(tag)::type;
    return masks_or_null != nullptr
               ? apply_threshold_typed<T, true>(tensors, dt, select_state,
                                                masks_or_null, stream)
               : apply_threshold_typed<T, false>(tensors, dt, select_state,
                                                 nullptr, stream);
  });
}

cudaError_t launch_apply_mask(const TensorTable& tensors,
                              const bool* const* masks, cudaStream_t stream) {
  if (masks == nullptr) return cudaErrorInvalidValue;
  return for_each_dtype(tensors, [&](auto tag, DType dt) {
    using T = typename decltype(tag)::type;
    return apply_mask_typed<T>(tensors, dt, masks, stream);
  });
}

}  // namespace mgpp_ext::cuda_kernels
