#!/usr/bin/env bash
# The test suite, from a fresh clone: bash scripts/test.sh [pytest args]
# The default set excludes tests marked slow; run those with: bash scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# Two worker processes by default (RKDSC_TEST_WORKERS=0 for one), each test file on one worker.
exec .venv/bin/python -m pytest -n "${RKDSC_TEST_WORKERS:-2}" --dist loadfile "$@"
