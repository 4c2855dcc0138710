"""SIGTERM (what `timeout` and job schedulers send) cleans up like Ctrl-C: no partial outputs left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steadydancer.cli.main import guarded
from steadydancer.fileio import atomic_dir, atomic_path

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_guarded_removes_partial_outputs_on_signal(tmp_path, signum, code, capsys):
    def work():
        with atomic_path(tmp_path / "video.mp4") as tmp:
            tmp.write_bytes(b"half a video")
            with atomic_dir(tmp_path / "inputs") as folder:
                (folder / "0000.jpg").write_bytes(b"x")
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the signal arrives before this returns
        return 0

    assert guarded(work) == code
    assert list(tmp_path.iterdir()) == []
    assert ("SIGTERM" if signum == signal.SIGTERM else "interrupted") in capsys.readouterr().err


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_prepare_killed_midway_leaves_nothing(tmp_path, signum, code):
    """The real command, stopped while it writes its folder."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "steadydancer", "prepare", "--image", str(REPO / "assets/demo/ref_image.png"),
           "--video", str(REPO / "assets/demo/driving_video.mp4"), "--out", str(out), "--max_frame", "24"]
    # a job started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: give the child the default disposition, as a terminal has
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.partial")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "prepare ended before it started writing: " + proc.communicate()[1][-800:]
    time.sleep(0.3)  # well inside the drawing
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-800:]
    assert list(tmp_path.iterdir()) == [], "partial outputs left behind"
