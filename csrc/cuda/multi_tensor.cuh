// Multi-tensor launches: one kernel launch covers many tensors.
//
// Why: an optimizer step touches hundreds of parameters; one launch per
// tensor would be dominated by launch latency for the small ones. As in
// apex multi_tensor_apply and PyTorch's fused Adam, every block handles one
// chunk of kChunkSize elements of one tensor; the table saying which block
// owns which (tensor, chunk), and the tensors' pointers and sizes, travel
// by value as the kernel's argument (kept under the classic 4 KB parameter
// limit), so no device memory has to be allocated or copied for it. When a
// list needs more table rows than fit, the host packer launches again.
// Offsets are 64-bit (chunk * kChunkSize), so tensors past 2^31 elements
// are fine; within a chunk a 32-bit index suffices.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mgpp_ext::cuda_kernels {

constexpr int kChunkSize = 65536;
constexpr int kBlockSize = 512;
constexpr int kVecElems = 4;  // elements per thread per vector access
constexpr int kMaxBlocksPerLaunch = 320;

// Pointers per tensor ("depth") -> table rows per launch, as in PyTorch, so
// that the argument stays below 4 KB.
template <int Depth>
struct MaxTensorsFor;
template <> struct MaxTensorsFor<1> { static constexpr int value = 110; };
template <> struct MaxTensorsFor<2> { static constexpr int value = 64; };
template <> struct MaxTensorsFor<4> { static constexpr int value = 36; };
template <> struct MaxTensorsFor<5> { static constexpr int value = 30; };

template <int Depth>
struct TensorListMeta {
  static constexpr int kMaxTensors = MaxTensorsFor<Depth>::value;
  void* ptr[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  // 1 when every pointer of the tensor allows kVecElems-wide accesses.
  unsigned char vec_ok[kMaxTensors];
  unsigned char block_to_tensor[kMaxBlocksPerLaunch];
  int block_to_chunk[kMaxBlocksPerLaunch];
};

static_assert(sizeof(TensorListMeta<1>) < 3900, "kernel argument too big");
static_assert(sizeof(TensorListMeta<2>) < 3900, "kernel argument too big");
static_assert(sizeof(TensorListMeta<4>) < 3900, "kernel argument too big");
static_assert(sizeof(TensorListMeta<5>) < 3900, "kernel argument too big");

// The chunk this block owns.
struct ChunkView {
  int tensor;
  int64_t start;  // element offset of the chunk in its tensor
  int len;        // elements in the chunk, 1..kChunkSize
  bool vec_ok;
};

template <int Depth>
__device__ __forceinline__ ChunkView chunk_of_block(
    const TensorListMeta<Depth>& meta) {
  ChunkView c;
  c.tensor = meta.block_to_tensor[blockIdx.x];
  c.start = int64_t(meta.block_to_chunk[blockIdx.x]) * kChunkSize;
  const int64_t rest = meta.numel[c.tensor] - c.start;
  c.len = rest < kChunkSize ? int(rest) : kChunkSize;
  c.vec_ok = meta.vec_ok[c.tensor] != 0;
  return c;
}

template <class T>
__device__ __forceinline__ T* chunk_ptr(void* base, const ChunkView& c) {
  return static_cast<T*>(base) + c.start;
}

inline bool vec_aligned(const void* p, int elem_bytes) {
  return reinterpret_cast<uintptr_t>(p) % uintptr_t(kVecElems * elem_bytes) ==
         0;
}

// Packs the chunks of the selected, non-empty tensors into tables and calls
// launch(meta, num_blocks) for each full table and for the last one.
//   ptr_of(t, d)   device pointer of tensor t in list d (0 <= d < Depth)
//   selected(t)    whether tensor t takes part (e.g. has the dtype at hand)
//   elem_bytes[d]  element size of list d, for the alignment test
//   max_blocks     table rows per launch, <= kMaxBlocksPerLaunch
// launch must enqueue the kernel and return cudaGetLastError(). The table is
// passed by value, so it can be refilled as soon as launch returns.
template <int Depth, class PtrOf, class Selected, class Launch>
cudaError_t for_each_launch(int64_t num_tensors, const int64_t* numels,
                            const int (&elem_bytes)[Depth], int max_blocks,
                            PtrOf ptr_of, Selected selected, Launch launch) {
  using Meta = TensorListMeta<Depth>;
  if (max_blocks < 1 || max_blocks > kMaxBlocksPerLaunch) {
    max_blocks = kMaxBlocksPerLaunch;
  }
  Meta meta;
  int nt = 0;  // table rows used by tensors
  int nb = 0;  // table rows used by blocks
  for (int64_t t = 0; t < num_tensors; ++t) {
    const int64_t n = numels[t];
    if (n <= 0 || !selected(t)) continue;
    bool vec_ok = true;
    for (int d = 0; d < Depth; ++d) {
      const void* p = ptr_of(t, d);
      meta.ptr[d][nt] = const_cast<void*>(p);
      vec_ok = vec_ok && vec_aligned(p, elem_bytes[d]);
    }
    meta.numel[nt] = n;
    meta.vec_ok[nt] = vec_ok ? 1 : 0;
    const int64_t chunks = (n + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_to_tensor[nb] = static_cast<unsigned char>(nt);
      meta.block_to_chunk[nb] = static_cast<int>(c);
      ++nb;
      const bool tensor_done = c == chunks - 1;
      const bool rows_full = tensor_done && nt + 1 == Meta::kMaxTensors;
      if (nb == max_blocks || rows_full) {
        const cudaError_t err = launch(meta, nb);
        if (err != cudaSuccess) return err;
        nb = 0;
        if (tensor_done) {
          nt = -1;  // next tensor starts the new table at row 0
        } else {   // this tensor continues in row 0 of the new table
          for (int d = 0; d < Depth; ++d) meta.ptr[d][0] = meta.ptr[d][nt];
          meta.numel[0] = meta.numel[nt];
          meta.vec_ok[0] = meta.vec_ok[nt];
          nt = 0;
        }
      }
    }
    ++nt;
  }
  if (nb > 0) return launch(meta, nb);
  return cudaSuccess;
}

}  // namespace mgpp_ext::cuda_kernels
