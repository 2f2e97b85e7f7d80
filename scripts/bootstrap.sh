#!/usr/bin/env bash
# Create .venv (once) and install vbp-rt into it. Usage: bash scripts/bootstrap.sh [EXTRAS]
# CPU machines get torch==2.13.0 (an unpinned torch pulls a multi-GB CUDA build); a machine whose
# system Python already has a CUDA torch keeps it (the venv then sees the system site-packages).
# onnxruntime: exactly one distribution, onnxruntime-gpu (extra gpu) where an NVIDIA GPU is, onnxruntime
# (extra cpu) elsewhere (vbp_rt/ort_install.py decides; VBP_ORT=cpu|gpu overrides). A wrong or second one
# in .venv is uninstalled first: both share one folder and break each other.
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
read -r ort_extra ort_remove <<< "$(python vbp_rt/ort_install.py)"
if [ -n "$ort_remove" ]; then
  echo "vbp-rt: replacing $ort_remove by the $ort_extra build of onnxruntime"
  pip uninstall -q -y $ort_remove
fi
all_extras="${extras:+$extras,}$ort_extra"
stamp=".venv/.vbp-installed-${all_extras//,/-}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ -n "$ort_remove" ]; then
  pip install -q -e ".[$all_extras]"
  touch "$stamp"
fi
# onnx2torch (extra [convert]: every method on ONNX models from elsewhere) declares torchvision, whose PyPI
# build needs a newer torch than the CPU one above: the tests get it without its declared dependencies.
if [[ ",$extras," == *",test,"* ]] && ! python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('onnx2torch') else 1)"; then
  pip install -q --no-deps "onnx2torch>=1.5"
fi
