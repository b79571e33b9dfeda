# Sourced by demo.sh and test.sh: make .venv (if missing), install requirements, fetch assets.
# Usage: source launch/setup.sh [requirements-file]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
STAMP=".venv/.installed-$(cat "$REQ" requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing $REQ into .venv (first run only)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$REQ"
  .venv/bin/python -m pip install --quiet --no-deps -e .
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
.venv/bin/python -m bigrec_jax.assets
# tcmalloc keeps freed pages mapped: with glibc every step of a CPU run page-faults its
# activations back in (~20% of a SmolLM2 LoRA step here, for JAX and torch alike).
# BIGREC_MALLOC=system opts out; BUILD.md ("Speed on CPU") has the details.
if [ "${BIGREC_MALLOC:-tcmalloc}" != "system" ] && [[ "${LD_PRELOAD:-}" != *tcmalloc* ]]; then
  for lib in /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
             /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4; do
    if [ -e "$lib" ]; then
      export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
      # Activations of a 7B run are single multi-GB allocations: not worth a warning each.
      export TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD="${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-1099511627776}"
      break
    fi
  done
fi
