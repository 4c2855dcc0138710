"""scripts/bench_long_video.py at a tiny shape on CPU: windows counted, numbers sane, bad input one line."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_long_video  # noqa: E402

TINY = ["--device", "cpu", "--dim", "32", "--ffn_dim", "64", "--num_heads", "2", "--num_layers", "2",
        "--size", "64*64", "--context_frames", "9", "--context_overlap", "4", "--steps", "1"]


def test_one_length_in_process() -> None:
    args = bench_long_video.parse_args(TINY)
    cfg, size, _, device, dtype = bench_long_video.resolve(args)
    row = bench_long_video.one_length(33, cfg, size, 9, 4, 1, device, dtype, decode=False)
    # 33 frames = 9 latent frames; windows of 3 overlapping by 1: starts 0, 2, 4, 6
    assert row["latent"] == [9, 8, 8] and row["windows"] == 4
    assert row["step_s"] > row["window_s"] > 0 and row["host_peak_gib"] > 0.05


def test_driver_prints_a_row_per_length(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_long_video.py"), *TINY,
                           "--frames", "9,17"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| 9 | 3x8x8 | 1 |" in proc.stdout and "| 17 | 5x8x8 | 2 |" in proc.stdout


def test_bad_lengths_and_windows_are_one_line(capsys) -> None:
    assert bench_long_video.main([*TINY, "--frames", "80"]) == 2
    assert capsys.readouterr().err.strip() == "error: --frames 80: every length must be 4n+1"
    assert bench_long_video.main([*TINY, "--context_overlap", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --context_overlap 9") and "\n" not in err
