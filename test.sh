#!/usr/bin/env bash
# PartCam's test command: sets everything up on a fresh machine, then lints and runs the tests.
# Extra arguments go to pytest, e.g. ./test.sh tests/test_engines.py -x
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --dev
export ANNY_CACHE_DIR="$PWD/.cache/anny" WARP_CACHE_PATH="$PWD/.cache/warp"
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
.venv/bin/python -m pytest -q "$@"
