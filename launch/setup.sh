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
