"""Progress bars: one line per update in a log file, and bars over the VAE's frames."""

from __future__ import annotations

import io
import re
import sys

import torch

from steadydancer.progress import progress


def test_bars_in_a_log_file_are_lines_not_carriage_returns(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress(range(3), desc="work", unit="frame"):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("work:   0%") and re.match(r"work: 100%.*3/3", lines[-1]), lines


def test_vae_encode_and_decode_report_every_frame(tmp_path, monkeypatch):
    """The bar follows the causal chunks (1 frame, then 4) and ends at the frame count."""
    from steadydancer.encoders.tiny import write_tiny_vae
    from steadydancer.encoders.vae import WanVAE

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr("steadydancer.progress.LOG_INTERVAL_S", 0.0)  # a line per chunk
    vae = WanVAE(write_tiny_vae(tmp_path / "Wan2.1_VAE.pth"))
    latent = vae.encode(torch.zeros(3, 9, 16, 16), desc="encode poses")
    vae.decode(latent, desc="decode")
    counts = {desc: [int(n) for n in re.findall(rf"^{desc}:.*?\| *(\d+)/9", log.getvalue(), re.M)]
              for desc in ("encode poses", "decode")}
    assert counts["encode poses"][0] == 0 and counts["encode poses"][-1] == 9 and 1 in counts["encode poses"]
    assert counts["decode"][-1] == 9 and 5 in counts["decode"]
    log.truncate(0)
    vae.encode(torch.zeros(3, 1, 16, 16), desc="one frame")  # a single frame needs no bar
    assert "one frame" not in log.getvalue()
