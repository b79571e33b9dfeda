#!/usr/bin/env bash
# The GPU benchmark on one H100: both sides (JAX and the PyTorch reference) in bfloat16, every
# task at full size, --flops, in about 8 minutes. Writes bench_h100.json (or $1) and prints the table.
#
#   bash launch/gpu/bench_h100.sh [OUT.json] [more launch/bench.py flags]
#   bash launch/gpu/bench_h100.sh --pack     # on a machine with the assets: make .bench_assets/
#
# The GPU machine needs python3 with jax[cuda], flax, optax, torch (CUDA), transformers, peft,
# tokenizers and safetensors (PYTHON=... picks another interpreter). Wheels in .whl/ are
# installed first (e.g. gguf for the GGUF checkpoint). Model: the embedded SmolLM2 when its GGUF
# is cached in $BIGREC_HOME and `gguf` imports; otherwise random weights with SmolLM2's exact
# architecture from .bench_assets/smollm2 (config + tokenizer; same shapes, same work).
# MovieLens-100K (for the real prompts and titles) comes from $BIGREC_HOME or .bench_assets.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
ASSETS="$ROOT/.bench_assets"

if [ "${1:-}" = "--pack" ]; then
  # Small files a bare GPU machine without network needs (about 6 MB): carry .bench_assets.
  "$PY" - "$ASSETS" <<'PY'
import os, shutil, sys
from bigrec_jax import assets
from bigrec_jax.model.loading import load_tokenizer  # noqa: F401  (transformers present)
out = sys.argv[1]
ml = assets.ml100k_dir()
os.makedirs(os.path.join(out, "ml-100k"), exist_ok=True)
for f in ("ml-100k.inter", "ml-100k.item"):
  shutil.copyfile(os.path.join(ml, f), os.path.join(out, "ml-100k", f))
from bigrec_jax.bench import workloads
tiny = workloads.tiny_model_dir()  # holds SmolLM2's tokenizer files
conv = [d for d in os.listdir(os.path.join(assets.home(), "converted")) if d.startswith("SmolLM2")]
src = os.path.join(assets.home(), "converted", sorted(conv)[0])
os.makedirs(os.path.join(out, "smollm2"), exist_ok=True)
shutil.copyfile(os.path.join(src, "config.json"), os.path.join(out, "smollm2", "config.json"))
for f in workloads.TOKENIZER_FILES:
  if os.path.exists(os.path.join(tiny, f)):
    shutil.copyfile(os.path.join(tiny, f), os.path.join(out, "smollm2", f))
print("packed", out)
PY
  grep -qxF "/.bench_assets/" .git/info/exclude 2>/dev/null || echo "/.bench_assets/" >> .git/info/exclude
  exit 0
fi

OUT_JSON="${1:-bench_h100.json}"
shift || true
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bench_site .whl/*.whl
  export PYTHONPATH="/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export BIGREC_HOME="${BIGREC_HOME:-$HOME/.cache/bigrec_jax}"
if [ -d "$ASSETS/ml-100k" ] && [ ! -f "$BIGREC_HOME/ml-100k/ml-100k.inter" ]; then
  mkdir -p "$BIGREC_HOME/ml-100k"
  cp "$ASSETS"/ml-100k/* "$BIGREC_HOME/ml-100k/"
fi
MODEL_FLAGS=()
if ! "$PY" -c "import gguf, os; from bigrec_jax import assets; \
    assert os.path.exists(assets.path_of(assets.SMOLLM2_GGUF))" 2>/dev/null; then
  if [ ! -f "$ASSETS/smollm2/config.json" ]; then
    echo "no SmolLM2 GGUF in $BIGREC_HOME and no $ASSETS/smollm2: run with --pack first" >&2
    exit 2
  fi
  echo "[bench_h100] SmolLM2 GGUF not available here: random weights, SmolLM2 architecture"
  MODEL_FLAGS=(--model="$ASSETS/smollm2" --random_weights)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
exec "$PY" launch/bench.py --flops --dtype=bfloat16 --repeats=3 --budget_s=15 \
  --worker_timeout_s=420 --out="$OUT_JSON" "${MODEL_FLAGS[@]}" "$@"
