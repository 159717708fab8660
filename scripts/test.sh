#!/usr/bin/env bash
# Everything needed to run the test suite, then the suite itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh --test
# CUDA kernel sources are torch-free, so nvcc can check them even where
# torch has no CUDA (skips itself without nvcc).
if [[ -f scripts/compile_check_cuda.sh ]]; then
  bash scripts/compile_check_cuda.sh
fi
"$PY" -m pytest python_tests -q -p no:cacheprovider "$@"
