#!/usr/bin/env bash
# Everything needed to run the test suite, then the suite itself, then the
# kernel tests against a second build of the CPU kernels (MGPP_CPU_ARCH=
# generic, the build for older and non-x86 CPUs), which must give the same
# bits as the installed one. MGPP_SKIP_ALT_BUILD=1 leaves that part out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Each stage's wall time, so a slow CI run shows where its minutes went.
stage_start=$SECONDS
stage_done() { echo "[test.sh] $1: $((SECONDS - stage_start)) s"; stage_start=$SECONDS; }
# The machine first, so that a failure names it (results must not depend
# on the CPU vendor: the kernels are tested bitwise against the reference).
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || uname -m)," \
     "$(nproc) cores"
bash scripts/setup.sh --test
stage_done "set-up and build"
"$PY" -c "import torch; print('torch', torch.__version__, '| cpu capability', torch.backends.cpu.get_cpu_capability())"
# CUDA kernel sources are torch-free, so nvcc can check them even where
# torch has no CUDA (skips itself without nvcc).
if [[ -f scripts/compile_check_cuda.sh ]]; then
  bash scripts/compile_check_cuda.sh
  stage_done "CUDA compile check"
fi
# The CPU kernels are built for this machine's widest vectors only; the
# other x86 vector build's branches get a compile check (front end only).
"$PY" scripts/compile_check_cpu_arch.py
stage_done "other CPU vector build compile check"
"$PY" -m pytest python_tests -q -p no:cacheprovider "$@"
stage_done "test suite"
if [[ "${MGPP_SKIP_ALT_BUILD:-0}" != "1" ]]; then
  bash scripts/test_alt_build.sh generic
  stage_done "generic build and its kernel tests"
fi
echo "[test.sh] total: $SECONDS s"
