"""The installed environment: the OpenCV that `import cv2` loads is the headless build."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest


def test_cv2_is_the_headless_build():
    """mediapipe pulls OpenCV's GUI build, which needs libGL.so.1 (absent on bare servers and
    slim containers); the README's install runs scripts/headless_opencv.sh to keep the headless one."""
    info = cv2.getBuildInformation()
    gui = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")]
    assert gui == ["NONE"], f"cv2 {cv2.__version__} is a GUI build ({gui}); run scripts/headless_opencv.sh"


@pytest.mark.skipif(shutil.which("ldd") is None, reason="no ldd on this machine")
def test_cv2_extension_does_not_link_libgl():
    folder = Path(cv2.__file__).parent
    extensions = sorted(folder.glob("cv2*.so"))
    assert extensions, f"no cv2 extension module in {folder}"
    linked = subprocess.run(["ldd", str(extensions[0])], capture_output=True, text=True, check=True).stdout
    assert "libGL" not in linked and "libQt" not in linked, linked


def test_the_opencv_fix_script_is_idempotent():
    """Run on an environment that already has the headless build, it changes nothing."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "headless_opencv.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stderr[-1000:]
    assert "(headless build)" in result.stdout and "Uninstalling" not in result.stdout + result.stderr
