"""scripts/bench_long_video.py at a tiny shape on CPU: windows counted, numbers sane, bad input one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

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


def test_window_figures_find_the_seams_and_the_identity() -> None:
    from steadydancer.pipeline.long_video import LongVideoOptions

    chain = LongVideoOptions(context_frames=9, mode="chain", chain_overlap=5)
    assert bench_long_video.window_spans(17, chain) == [(0, 9), (9, 4), (13, 4)]  # windows 0-8, 4-12, 8-16
    context = LongVideoOptions(context_frames=9, context_overlap=4)
    assert bench_long_video.window_spans(25, context) == [(0, 8), (8, 8), (16, 9)]  # latent starts 0, 2, 4
    frames = np.zeros((17, 8, 8, 3), dtype=np.uint8)
    frames[9:13], frames[13:] = 51, 102  # each chain window a flat colour: a jump at each seam only
    reference = np.full((8, 8, 3), 102, dtype=np.uint8)

    def colour(x):  # a made-up "backbone": the mean colour as a 2-vector
        return torch.stack([x.mean(dim=(1, 2, 3)), torch.ones(len(x))], dim=1)

    rows = bench_long_video.window_figures(frames, reference, bench_long_video.window_spans(17, chain), dino=colour)
    assert [r["frames"] for r in rows] == ["0-8", "9-12", "13-16"] and rows[0]["seam_flicker"] is None
    assert rows[1]["seam_flicker"] == pytest.approx(1 - 51 / 255) and rows[2]["seam_flicker"] == pytest.approx(1 - 51 / 255)
    assert all(r["inside_flicker"] == 1.0 for r in rows)
    assert rows[2]["dino_to_reference"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["dino_to_reference"] < 0.99
    assert "| 9-12 |" in bench_long_video.format_figures(rows)


def test_compare_runs_each_setting_on_the_tiny_checkpoint(tmp_path, capsys) -> None:
    from test_pipeline_support import tiny_checkpoint, write_inputs

    folder = write_inputs(tmp_path / "in", 17, pose_size=(40, 56))
    code = bench_long_video.main(["--ckpt_dir", str(tiny_checkpoint()), "--input_dir", str(folder), "--device", "cpu",
                                  "--frame_num", "17", "--context_frames", "9", "--context_overlap", "4",
                                  "--size", "6144", "--steps", "1", "--out", str(tmp_path / "out"),
                                  "--compare", "context_image=first,context_image=every"])
    table = capsys.readouterr().out
    assert code == 0, table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["context_image-every.mp4",
                                                                    "context_image-first.mp4"]
    rows = [line for line in table.splitlines() if line.startswith("| context_image")]
    assert len(rows) == 4 and "| context_image=every | 1 | 8-16 |" in table
