#!/usr/bin/env bash
# Builds the CPU kernels a second time for another target, beside the
# installed build, and runs the kernel tests against it:
#   scripts/test_alt_build.sh generic   (no x86 vector extensions: the build
#                                        for older and non-x86 CPUs)
#   scripts/test_alt_build.sh avx2
# The kernels must give the same bits whatever vectors the build uses, so the
# same tests (bitwise against the reference) must pass. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
arch=${1:?usage: scripts/test_alt_build.sh generic|avx2 [pytest args]}
shift
out=build/alt-$arch
sources=(csrc/*.cpp csrc/*.h csrc/cpu setup.py)
lib=$(ls "$out"/mgpp_ext/_C*.so 2>/dev/null | head -n 1 || true)
if [[ -z "$lib" || -n "$(find "${sources[@]}" -newer "$lib" -type f 2>/dev/null)" ]]; then
  echo "building the MGPP_CPU_ARCH=$arch kernels into $out (about 2-3 minutes on 2 cores) ..."
  mkdir -p "$out"
  MGPP_CPU_ONLY=1 MGPP_CPU_ARCH=$arch MAX_JOBS=${MAX_JOBS:-2} \
    "$PY" setup.py -q build_ext --build-lib "$out" --build-temp "$out/tmp" >"$out/build.log" 2>&1 \
    || { cat "$out/build.log"; exit 1; }
  lib=$(ls "$out"/mgpp_ext/_C*.so | head -n 1)
fi
echo "kernel tests against $lib (MGPP_CPU_ARCH=$arch)"
MGPP_EXT_LIBRARY="$PWD/$lib" "$PY" -m pytest -q -p no:cacheprovider \
  python_tests/test_alt_build_loaded.py python_tests/test_exp_fp32.py \
  python_tests/test_step_vs_reference.py python_tests/test_threshold.py \
  python_tests/test_opcheck.py python_tests/test_deferred_check.py \
  python_tests/test_all_finite.py python_tests/test_movement.py "$@"
