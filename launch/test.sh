#!/usr/bin/env bash
# The test suite: sets up .venv (runtime + test-only deps) and the embedded assets, then pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/model -k lora`; the fast tier:
# `bash launch/test.sh -m unit` (tiers unit / integration / e2e: tests/conftest.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" requirements-test.txt
exec .venv/bin/python -m pytest -q "$@"
