#!/usr/bin/env bash
# The test suite: sets up .venv (runtime + test-only deps) and the embedded assets, then pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/model -k lora`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" requirements-test.txt
exec .venv/bin/python -m pytest -q "$@"
