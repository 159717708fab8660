// Launcher of the fused MGPP step (prior gradient + AdamW + optional fixed
// mask + optional level-0 histogram of the updated |param|).
//
// Why a torch-free header: the kernel compiles with plain nvcc (no torch
// CUDA headers needed), and mgpp_cuda.cu, the only file that sees torch,
// fills these plain structs from the op's arguments.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace mgpp_ext::cuda_kernels {

// Host arrays of num_tensors device pointers (and sizes). Tensor i of every
// list has numels[i] elements in the same memory order.
struct StepTensorTable {
  int64_t num_tensors;
  void* const* params;
  const void* const* grads;      // read only
  void* const* exp_avgs;
  void* const* exp_avg_sqs;
  const bool* const* masks;      // nullptr: no fixed mask
  const int64_t* numels;
  DType param_dtype;             // params and grads
  DType state_dtype;             // exp_avgs and exp_avg_sqs: param_dtype or F32
};

// The op's scalar arguments, as given.
struct StepHyper {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  int64_t step;  // >= 1
  bool apply_prior;
  double num_examples;
  double lambda_mix;
  double sigma0_sq;
  double sigma1_sq;
  // Level-0 histogram window: keys are clamped to [hist_lo, hist_hi].
  int hist_lo;
  int hist_hi;
  // Optional level-1 histograms (device int64[hist1_n * 65536], or nullptr)
  // of the elements whose level-0 key is hist1_lo + i, i < hist1_n.
  int64_t* hist1;
  int hist1_lo;
  int hist1_n;
  // Optional device flag: when it holds false the launch changes nothing
  // (the optimizer gates a step on its all_finite check this way, without
  // the host waiting for the check). nullptr: always apply.
  const bool* apply_if;
};

// The per-element constants, computed in double on the host and cast to
// float (as mgpp_ext/reference.py; the CPU kernel does the same).
struct StepScalars {
  float c1, c2, inv_s0, inv_s1, inv_n;
  float decay, b1, omb1, b2, omb2, eps, step_size, bc2_sqrt;
  int apply_prior;
  uint32_t hist_lo, hist_hi;
  unsigned long long* hist1;
  uint32_t hist1_lo, hist1_n;
  const bool* apply_if;
};

StepScalars make_step_scalars(const StepHyper& hp);

// hist_or_null: a device int64[65536] that receives (+=) the level-0
// histogram of the stored |param| with keys clamped to [hp.hist_lo,
// hp.hist_hi] (the edge bins also count what lies beyond them), or nullptr. Enqueues on stream; returns
// the first launch error, or cudaErrorInvalidValue for an unsupported
// dtype pair.
cudaError_t launch_mgpp_step(const StepTensorTable& table, const StepHyper& hp,
                             int64_t* hist_or_null, cudaStream_t stream);

}  // namespace mgpp_ext::cuda_kernels
