#!/usr/bin/env bash
# Everything a GPU machine is needed for, in as few calls as possible:
#   scripts/gpu_session.sh build   build mgpp_ext._C with the CUDA kernels
#                                  against the machine's own torch
#   scripts/gpu_session.sh test    the test suite's CUDA cases, then the rest
#   scripts/gpu_session.sh bench   the GPU benchmarks the README reports:
#                                  BERT-base's 85M prunable weights and a
#                                  1.3B Llama-like set, fp32 and bf16
#   scripts/gpu_session.sh all     the three in order
# Full logs and the benchmark JSON (named after the GPU) go to $OUT
# (default: benchmarks/results/gpu-run); the last lines printed are a short
# summary. Nothing is installed: the machine's torch, pytest and hypothesis
# are used as they are.
set -uo pipefail
cd "$(dirname "$0")/.."
# The extension is built in place, not installed: every script imports the
# package from the repository root.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
what=${1:-all}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
tag=$(echo "${gpu:-unknown-gpu}" | tr -c 'A-Za-z0-9\n' '_' | tr 'A-Z' 'a-z' | sed 's/__*/_/g; s/_$//')
summary=()

build() {
  echo "== build ($gpu, $($PY -c 'import torch; print(torch.__version__)'))"
  # sm_90 for Hopper (H100/H200), sm_80 so the same build runs on Ampere.
  if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} \
      "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    tail -n 40 "$OUT/build.log"
    summary+=("build: FAILED (see $OUT/build.log)")
    return 1
  fi
  if ! "$PY" -c "import mgpp_ext, torch; assert mgpp_ext.ops.EXTENSION_ERROR is None, \
mgpp_ext.ops.EXTENSION_ERROR; x = torch.randn(1000, device='cuda'); \
print('global_threshold on cuda:', float(mgpp_ext.ops.global_threshold([x], 10)))" \
      2>&1 | tee -a "$OUT/build.log"; then
    summary+=("build: built, but the smoke test FAILED (see $OUT/build.log)")
    return 1
  fi
  summary+=("build: ok")
}

run_tests() {
  echo "== tests"
  "$PY" -m pytest -q -p no:cacheprovider python_tests -m "not soak" -k cuda \
    > "$OUT/pytest_cuda.log" 2>&1
  local rc=$?
  summary+=("CUDA tests (-k cuda): rc $rc, $(tail -n 1 "$OUT/pytest_cuda.log")")
  "$PY" -m pytest -q -p no:cacheprovider python_tests -m "not soak" -k "not cuda" \
    > "$OUT/pytest_rest.log" 2>&1
  summary+=("other tests: rc $?, $(tail -n 1 "$OUT/pytest_rest.log")")
  return $rc
}

bench() {
  echo "== benchmarks"
  local shapes size dtype name
  for spec in "bert 84934656" "llama 1.3B"; do
    read -r shapes size <<< "$spec"
    for dtype in float32 bfloat16; do
      name="${tag}_${shapes}_${dtype}"
      echo "-- $name"
      "$PY" benchmarks/bench_step.py --device cuda --shapes "$shapes" --sizes "$size" \
        --dtype "$dtype" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
      local rc=$?
      summary+=("bench $name: rc $rc; $(grep -E '^\(a\)/\(c\)' "$OUT/$name.txt" | head -n 1)")
    done
  done
  name="${tag}_scores_float32"
  echo "-- $name"
  "$PY" benchmarks/bench_scores.py --device cuda --sizes 85M --json "$OUT/$name.json" \
    > "$OUT/$name.txt" 2>&1
  summary+=("bench $name: rc $?; $(grep -E 'Movement step' "$OUT/$name.txt" | head -n 1)")
}

# The exit status is the build's or the tests' (the benchmarks report theirs
# in the summary); after a failed build nothing else runs.
status=0
case "$what" in
  build) build; status=$? ;;
  test) run_tests; status=$? ;;
  bench) bench ;;
  all) if build; then run_tests; status=$?; bench; else status=1; fi ;;
  *) echo "usage: $0 [build|test|bench|all]" >&2; exit 2 ;;
esac
echo
echo "== summary ($gpu)"
printf '%s\n' "${summary[@]}"
exit "$status"
