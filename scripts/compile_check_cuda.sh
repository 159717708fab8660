#!/usr/bin/env bash
# Compile-checks the torch-free CUDA kernel sources (csrc/cuda/*_kernel.cu)
# with plain nvcc for sm_80 and sm_90, so kernel typos are caught on machines
# without a GPU or a CUDA build of torch. The binding csrc/cuda/mgpp_cuda.cu
# needs torch's CUDA headers and is compiled only by setup.py.
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
  -std=c++17 -O3 --expt-relaxed-constexpr
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

echo "cuda compile check: ok (sm_80, sm_90)"
