"""`generate_dancer.py` / `steadydancer generate`: end to end on a tiny checkpoint, and every bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_support import tiny_checkpoint, write_inputs

from steadydancer.cli.main import main
from steadydancer.pose.video import read_video

REPO = Path(__file__).resolve().parents[1]


def test_generate_dancer_end_to_end(tmp_path):
    ckpt = tiny_checkpoint()
    inputs = write_inputs(tmp_path / "in", 6)  # 6 frames available, 5 used
    out = tmp_path / "out" / "video.mp4"
    cmd = [sys.executable, str(REPO / "generate_dancer.py"), "--task", "i2v-14B", "--size", "832*480",
           "--ckpt_dir", str(ckpt), "--input_dir", str(inputs), "--frame_num", "5", "--sample_steps", "1",
           "--base_seed", "0", "--offload_model", "True", "--save_file", str(out), "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    frames, fps = read_video(out)
    # reference 40x56 at the 832*480 area: lat_h = 747.7 // 8 // 2 * 2 = 92, lat_w = 534.1 // 8 // 2 * 2 = 66
    assert len(frames) == 5 and frames[0].shape == (736, 528, 3) and fps == 16
    assert [p.name for p in out.parent.iterdir()] == ["video.mp4"]


def _run_cli(argv, capsys) -> tuple[int, str]:
    code = main(["generate", *argv])
    return code, capsys.readouterr().err.strip()


@pytest.fixture
def setup(tmp_path):
    inputs = write_inputs(tmp_path / "in", 5)
    out = tmp_path / "out.mp4"
    base = ["--ckpt_dir", str(tiny_checkpoint()), "--input_dir", str(inputs), "--save_file", str(out),
            "--device", "cpu", "--sample_steps", "1", "--frame_num", "5", "--size", "832*480"]
    return tmp_path, inputs, out, base


def _expect_error(capsys, argv, out: Path, *words: str) -> None:
    code, err = _run_cli(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err
    assert not out.exists() and not list(out.parent.glob("*.mp4"))


def test_missing_checkpoint_file_is_named(setup, capsys):
    tmp_path, _, out, base = setup
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    argv = base + ["--ckpt_dir", str(broken)]
    _expect_error(capsys, argv, out, "Wan2.1_VAE.pth", "missing")


def test_too_few_pose_frames(setup, capsys):
    _, _, out, base = setup
    _expect_error(capsys, base + ["--frame_num", "9"], out, "found 5", "needs 9")


def test_frame_num_not_4n_plus_1(setup, capsys):
    _, _, out, base = setup
    _expect_error(capsys, base + ["--frame_num", "4"], out, "--frame_num 4", "4n+1")


def test_unsupported_size(setup, capsys):
    _, _, out, base = setup
    _expect_error(capsys, base + ["--size", "640*480"], out, "--size 640*480", "832*480")


def test_unreadable_image(setup, capsys):
    tmp_path, _, out, base = setup
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    _expect_error(capsys, base + ["--image", str(bad)], out, "bad.png")


def test_pose_folders_of_different_lengths(setup, capsys, tmp_path):
    _, _, out, base = setup
    other = write_inputs(tmp_path / "uneven", 5, neg_frames=7)
    _expect_error(capsys, base + ["--input_dir", str(other)], out, "5 frames", "7")


def test_multi_gpu_flags_need_torchrun(setup, capsys):
    _, _, out, base = setup
    _expect_error(capsys, base + ["--ulysses_size", "2"], out, "--ulysses_size", "torchrun")


def test_save_file_that_is_a_folder_stops_before_generation(setup, capsys):
    tmp_path, _, out, base = setup
    folder = tmp_path / "videos"
    folder.mkdir()
    _expect_error(capsys, base + ["--save_file", str(folder)], out, "--save_file", "is a folder")
    assert not list(folder.iterdir())


def _no_model_may_load(monkeypatch):
    """Fail the test if generation gets as far as building the pipeline (models would load)."""
    from steadydancer.pipeline import i2v

    def refuse(*args, **kwargs):
        raise AssertionError("a model was about to load")

    monkeypatch.setattr(i2v.DancerPipeline, "__init__", refuse)


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_shard", "truncate_vae", "truncate_t5"])
def test_damaged_checkpoint_is_found_before_any_model_loads(setup, capsys, monkeypatch, damage):
    tmp_path, _, out, base = setup
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), broken)
    shard = sorted(broken.glob("diffusion_pytorch_model-*.safetensors"))[-1]
    target = {"truncate_shard": shard, "delete_shard": shard, "truncate_vae": broken / "Wan2.1_VAE.pth",
              "truncate_t5": broken / "models_t5_umt5-xxl-enc-bf16.pth"}[damage]
    if damage == "delete_shard":
        target.unlink()
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) * 2 // 3])
    _no_model_may_load(monkeypatch)
    _expect_error(capsys, base + ["--ckpt_dir", str(broken)], out, target.name)


def test_a_gap_in_the_pose_frames_is_named(setup, capsys, tmp_path):
    _, _, out, base = setup
    inputs = write_inputs(tmp_path / "gap", 9)
    (inputs / "positive" / "0005.jpg").unlink()
    _expect_error(capsys, base + ["--input_dir", str(inputs), "--frame_num", "9"], out, "0005.jpg", "missing")


def test_unreadable_image_reads_the_same_in_prepare_and_generate(setup, capsys, tmp_path):
    _, _, out, base = setup
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, generate_err = _run_cli(base + ["--image", str(bad)], capsys)
    code2 = main(["prepare", "--image", str(bad), "--video", "v.mp4", "--out", str(tmp_path / "o")])
    prepare_err = capsys.readouterr().err.strip()
    assert code == code2 == 2
    assert generate_err == prepare_err == f"error: cannot read reference image {bad}: not an image file"


def test_hyphenated_flags_and_a_plain_default_file_name(tmp_path, monkeypatch):
    """--frame-num works as --frame_num does; the default output name has no '*' or ','."""
    import argparse

    from steadydancer.cli import generate
    from steadydancer.cli.main import add_hyphen_aliases

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    add_hyphen_aliases(parser)
    args = parser.parse_args(["--frame-num", "9", "--sample-steps", "2", "--ckpt-dir", "c",
                              "--prompt", "a man, dancing * fast / slow", "--image", "x.png"])
    assert (args.frame_num, args.sample_steps, args.ckpt_dir) == (9, 2, "c")
    args = generate.resolve_args(args)
    name = args.save_file
    assert name.endswith(".mp4") and not set(name) & set("*,/ "), name
    assert name.startswith("i2v-14B_1280x720_1_1_a_man_dancing_fast_slow_")


def test_logs_name_the_seed_source_prompt_and_pose_speed(tmp_path, caplog):
    """A given seed is not called random; the prompt's file and a 24 fps pose folder are logged."""
    import argparse
    import json

    from steadydancer.cli import generate

    inputs = write_inputs(tmp_path / "in", 5)
    (inputs / "prompt.txt").write_text("a dancer in blue\n")
    (inputs / "keypoints.json").write_text(json.dumps({"driving": {"fps": 24.0}}))
    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(["--ckpt_dir", "c", "--input_dir", str(inputs)])
    with caplog.at_level("INFO"):
        generate.resolve_args(args)
    assert f"prompt from {inputs / 'prompt.txt'}: a dancer in blue" in caplog.text
    assert "24 fps and the video is written at 16 fps" in caplog.text and "--target_fps 16" in caplog.text


def test_generation_log_has_stage_lines_and_no_carriage_returns(tmp_path):
    """Run as a job would (output to a pipe): every long stage logs a label and line-wise progress."""
    ckpt = tiny_checkpoint()
    inputs = write_inputs(tmp_path / "in", 5)
    cmd = [sys.executable, "-m", "steadydancer", "generate", "--size", "832*480", "--ckpt_dir", str(ckpt),
           "--input_dir", str(inputs), "--frame_num", "5", "--sample_steps", "2", "--base_seed", "7",
           "--save_file", str(tmp_path / "o.mp4"), "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "\r" not in log
    for needle in ("T5: encoding", "CLIP: encoding", "VAE: encoding", "VAE encode positive poses:",
                   "VAE encode negative poses:", "sampling:", "VAE: decoding 5 frames", "VAE decode:",
                   "seed 7\n"):
        assert needle in log, needle
    assert "to reproduce" not in log  # the seed was given


@pytest.mark.parametrize("flags, words", [
    (["--context_frames", "33", "--context_overlap", "33"], ["--context_overlap 33", "less than the window"]),
    (["--context_frames", "33", "--context_overlap", "40"], ["--context_overlap 40", "--context_frames 33"]),
    (["--context_frames", "32"], ["--context_frames 32", "4n+1"]),
    (["--context_frames", "1"], ["--context_frames 1", "4n+1"]),
    (["--long_video", "chain", "--context_frames", "9", "--context_overlap", "0"], ["--context_overlap 0"]),
    (["--context_frames", "33", "--frame_num", "69"], ["found 5 pose frames", "needs 69"]),
    (["--sample_timesteps", "1000,750"], ["--sample_timesteps", "euler or lcm"]),
    (["--sample_solver", "euler", "--sample_timesteps", "1000,x"], ["--sample_timesteps 1000,x", "numbers"]),
    (["--sample_solver", "lcm", "--sample_timesteps", "500,750"], ["decreasing"]),
])
def test_bad_long_video_and_few_step_flags_are_one_line(setup, capsys, flags, words):
    _, _, out, base = setup
    _expect_error(capsys, base + flags, out, *words)


@pytest.mark.parametrize("mode", ["context", "chain"])
def test_windowed_generation_from_the_command_line(tmp_path, capsys, monkeypatch, mode):
    from steadydancer.pipeline import run

    monkeypatch.setattr(run, "max_area_for", lambda size: 64 * 96)  # a 64x80 video keeps the test short
    inputs = write_inputs(tmp_path / "in", 13)
    out = tmp_path / "long.mp4"
    argv = ["--ckpt_dir", str(tiny_checkpoint()), "--input_dir", str(inputs), "--save_file", str(out),
            "--device", "cpu", "--frame_num", "13", "--context_frames", "9", "--context_overlap", "4",
            "--long_video", mode, "--sample_solver", "euler", "--sample_timesteps", "1000,500"]
    code, _ = _run_cli(argv, capsys)
    frames, fps = read_video(out)
    assert code == 0 and len(frames) == 13 and frames[0].shape == (80, 64, 3)


def test_a_pose_cfg_window_outside_the_steps_is_one_line(setup, capsys):
    """The same check as the Python API's cfg_window (steadydancer.checks)."""
    _, _, out, base = setup
    _expect_error(capsys, base + ["--st_cond_cfg", "0.5", "--end_cond_cfg", "0.2"], out, "--end_cond_cfg 0.2",
                  "0.5 (--st_cond_cfg) to 1")
    _expect_error(capsys, base + ["--sample_solver", "unipc", "--sample_timesteps", "1000,500"], out,
                  "--sample_timesteps", "euler or lcm")
