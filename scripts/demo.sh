#!/usr/bin/env bash
# Everything needed to run the main job, then the job: fine-tune the real
# pretrained MiniLM on the real TREC question set and prune it to 90%.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" examples/finetune_prune.py "$@"
