#!/usr/bin/env bash
# The main command: set up .venv, then open the viewer on the embedded synthetic drive (generated into
# ./out on first use) with the shipped NetSVF. Without a display it runs headless instead: it writes the
# overlaid video and a timing summary to ./out and says so.
# Usage: bash scripts/demo.sh [more `vbp view` options, e.g. --methods vbp --backend torch-cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export VBP_RT_CACHE="${VBP_RT_CACHE:-$PWD/out}"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "${QT_QPA_PLATFORM:-}" = offscreen ]; then
  exec vbp view "$@"
fi
echo "vbp-rt demo: no display (DISPLAY is not set), so no window: running headless;" \
     "the overlaid video and the timing summary go to $VBP_RT_CACHE/demo_overlay.mp4 and .json" >&2
exec vbp view --headless --overwrite --out "$VBP_RT_CACHE/demo_overlay.mp4" "$@"
