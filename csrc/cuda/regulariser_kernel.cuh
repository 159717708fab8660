// Launchers of the ADMM, SR-STE and movement kernels (schemas in
// csrc/regulariser_ops.cpp; CPU kernels in csrc/cpu/regulariser_cpu.cpp).
//
// Why a torch-free header: the kernels compile with plain nvcc (no torch
// CUDA headers needed); regulariser_cuda.cu, the binding, fills this plain
// struct. One launch per tensor.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"
#include "mgpp_step_kernel.cuh"  // StepScalars, make_step_scalars

namespace mgpp_ext::cuda_kernels {

// One tensor of an op, every buffer contiguous in row-major order (the
// order of the packed ADMM masks). The group layout [outer, size, inner]
// is that of the n:m dim: element (o, d, q) at (o * size + d) * inner + q.
struct RegTensor {
  int64_t numel = 0;
  void* param = nullptr;        // P: W (ADMM), W M (SR-STE)
  const void* grad = nullptr;   // P
  void* exp_avg = nullptr;      // S
  void* exp_avg_sq = nullptr;   // S
  float* dual = nullptr;        // ADMM: A
  uint8_t* dual_mask = nullptr; // ADMM: M, ceil(numel / 8) bytes, bit j of byte i = element 8 i + j
  void* dense = nullptr;        // SR-STE: the dense W (P)
  bool* mask = nullptr;         // SR-STE: M
  float* score = nullptr;       // movement: S (fp32)
  int64_t outer = 1, size = 1, inner = 1;
};

// AdamW with g + rho ((W - Z) + U); sc.apply_if gates it.
cudaError_t launch_admm_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                             float rho, cudaStream_t stream);
// A <- W + U.
cudaError_t launch_admm_combine(const RegTensor& t, DType p, cudaStream_t stream);
// A <- W + U, then M <- the n:m keep mask of |A| (two launches: the bits of
// one mask byte belong to up to eight groups, so each byte is written by one
// thread, after every A is final).
cudaError_t launch_admm_project(const RegTensor& t, DType p, int n, int m, cudaStream_t stream);
// M <- |A| > tau, tau the fp32 bits in select_state[2] (device memory).
cudaError_t launch_admm_threshold_mask(const RegTensor& t, const int64_t* select_state,
                                       cudaStream_t stream);
// AdamW on the dense W with g + lambda_w (1 - M) W; with update_mask, M <-
// the n:m mask of the updated |W| (one thread per group, in one pass);
// param <- W M. sc.apply_if gates it.
cudaError_t launch_srste_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                              float lambda_w, int n, int m, bool update_mask,
                              cudaStream_t stream);

// Movement's step (schema in csrc/score_ops.cpp): S <- S - score_lr (g W),
// then AdamW on g; sc.apply_if gates both.
cudaError_t launch_movement_step(const RegTensor& t, DType p, DType s, const StepScalars& sc,
                                 float score_lr, cudaStream_t stream);

}  // namespace mgpp_ext::cuda_kernels
