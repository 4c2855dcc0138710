#!/usr/bin/env bash
# Keep OpenCV's headless build as the one `import cv2` loads.
#
# mediapipe requires opencv-contrib-python, the GUI build (Qt, libGL.so.1), and we require
# opencv-python-headless. Both install into the same cv2/ folder, so whichever pip installs last
# wins, and bare servers and slim containers have no libGL.so.1 for the GUI build. This removes
# the GUI build (its uninstall also deletes the shared cv2/ files) and reinstalls the headless one.
# mediapipe only uses cv2 for drawing helpers, which the headless build has too.
# Idempotent: does nothing when the headless build is already the one in place.
set -euo pipefail
PYTHON=${PYTHON:-python}
gui_build() {
  "$PYTHON" - <<'PY'
import sys
try:
    import cv2
except ImportError:
    sys.exit(0)  # broken or missing: (re)install the headless build
info = cv2.getBuildInformation()
gui = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")]
sys.exit(0 if gui and gui[0] != "NONE" else 1)
PY
}
if "$PYTHON" -m pip show -q opencv-contrib-python >/dev/null 2>&1 || gui_build; then
  "$PYTHON" -m pip uninstall -y -q opencv-contrib-python opencv-python 2>/dev/null || true
  "$PYTHON" -m pip install -q --no-deps --force-reinstall "opencv-python-headless>=4.9"
fi
"$PYTHON" -c "import cv2; print('OpenCV', cv2.__version__, '(headless build)')"
