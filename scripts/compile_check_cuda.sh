#!/usr/bin/env bash
# Compile-checks the torch-free CUDA kernel sources (csrc/cuda/*_kernel.cu)
# with plain nvcc for sm_80 and sm_90, so kernel typos are caught on machines
# without a GPU or a CUDA build of torch. The bindings (csrc/cuda/mgpp_cuda.cu,
# csrc/cuda/nm_cuda.cu, csrc/cuda/regulariser_cuda.cu, csrc/cuda/row_cuda.cu) are compiled
# too, against the CPU torch headers with
# stand-ins (see below).
# Flags mirror what torch.utils.cpp_extension passes to nvcc (no implicit
# half/bfloat16 conversions), and warnings are errors.
# Exit status: 0 when every file compiles, or when nvcc is not on PATH.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v nvcc >/dev/null 2>&1; then
  echo "cuda compile check: skipped (nvcc not on PATH)"
  exit 0
fi

shopt -s nullglob
sources=("$root"/csrc/cuda/*_kernel.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "cuda compile check: no csrc/cuda/*_kernel.cu found" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

flags=(
  -std=c++20 -O3 --expt-relaxed-constexpr
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  -gencode arch=compute_80,code=sm_80
  -gencode arch=compute_90,code=sm_90
  --Werror all-warnings -Xcompiler=-Wall,-Werror
)

pids=()
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  nvcc "${flags[@]}" -c "$src" -o "$tmp/$name.o" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
done

failed=0
for i in "${!sources[@]}"; do
  name="$(basename "${sources[$i]}" .cu)"
  if ! wait "${pids[$i]}"; then
    echo "cuda compile check: FAILED for csrc/cuda/$name.cu" >&2
    cat "$tmp/$name.log" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1

# The bindings, mgpp_cuda.cu and nm_cuda.cu, include torch's CUDA headers. A CPU build of
# torch ships those, but not the CUDA math libraries' headers they include
# (cuBLAS, cuSPARSE, cuSOLVER) nor one generated macro header. The binding
# uses none of those libraries, so stand-ins that declare only the handle
# and status types torch's headers name are enough to compile it, which
# checks the binding against the kernels' headers and torch's API.
py=${PYTHON:-python3}
if torch_inc=$("$py" -c "import torch.utils.cpp_extension as c; print('\n'.join(c.include_paths()))" 2>/dev/null); then
  stub="$tmp/stub"
  mkdir -p "$stub/c10/cuda/impl"
  printf '#pragma once\ntypedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n' > "$stub/cusparse.h"
  printf '#pragma once\ntypedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n' > "$stub/cublas_v2.h"
  printf '#pragma once\ntypedef struct cublasLtContext* cublasLtHandle_t;\n' > "$stub/cublasLt.h"
  printf '#pragma once\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n' > "$stub/cusolverDn.h"
  printf '#pragma once\ntypedef int cusolverStatus_t;\n' > "$stub/cusolver_common.h"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
  inc=(-I"$stub")
  while IFS= read -r d; do inc+=(-I"$d"); done <<< "$torch_inc"
  # As setup.py compiles them (torch 2.11+ headers expect C++20).
  bindings=(mgpp_cuda nm_cuda regulariser_cuda row_cuda)
  bpids=()
  for b in "${bindings[@]}"; do
    nvcc -std=c++20 -O0 --expt-relaxed-constexpr "${inc[@]}" \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
      -DTORCH_EXTENSION_NAME=_C -arch=sm_90 \
      -c "$root/csrc/cuda/$b.cu" -o "$tmp/$b.o" >"$tmp/$b.binding.log" 2>&1 &
    bpids+=("$!")
  done
  for i in "${!bindings[@]}"; do
    b="${bindings[$i]}"
    if ! wait "${bpids[$i]}"; then
      echo "cuda compile check: FAILED for csrc/cuda/$b.cu (a torch binding)" >&2
      grep -v -e "warning" "$tmp/$b.binding.log" | head -n 60 >&2
      failed=1
    fi
  done
  [ "$failed" -eq 0 ] || exit 1
  echo "cuda compile check: ok (sm_80, sm_90; bindings ${bindings[*]} against torch's headers, sm_90)"
else
  echo "cuda compile check: ok (sm_80, sm_90; binding skipped: torch not importable)"
fi
