#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (no GPU or display needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
. .venv/bin/activate
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
exec python -m pytest -q "$@"
