#!/usr/bin/env bash
# The test suite: sets up .venv (runtime + test-only deps) and the embedded assets, then pytest.
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/model -k lora`; the fast tier:
# `bash launch/test.sh -m unit` (tiers unit / integration / e2e: tests/conftest.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh" requirements-test.txt
# Two workers by default (pytest-xdist; BIGREC_TEST_WORKERS=0 runs in this process), each
# taking whole files so module fixtures (a tiny pipeline run, a trained adapter) run once:
# compiling is single-threaded and a large share of the suite, so two workers overlap it even
# on two cores. `-n N` among the arguments overrides the default.
exec .venv/bin/python -m pytest -q -n "${BIGREC_TEST_WORKERS:-2}" --dist loadfile "$@"
