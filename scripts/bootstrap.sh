#!/usr/bin/env bash
# Create .venv (once) and install vbp-rt into it. Usage: bash scripts/bootstrap.sh [EXTRAS]
# CPU machines get torch==2.13.0 (an unpinned torch pulls a multi-GB CUDA build); a machine whose
# system Python already has a CUDA torch keeps it (the venv then sees the system site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "vbp-rt: using the system's CUDA torch"; "$py" -m venv --system-site-packages .venv
  else
    "$py" -m venv .venv
  fi
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "torch==2.13.0"
fi
stamp=".venv/.vbp-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
