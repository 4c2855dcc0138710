"""--step_cache through `steadydancer generate` and `steadydancer calibrate-cache` on the tiny checkpoint."""

from __future__ import annotations

import json
import logging

import pytest

from steadydancer.cli.main import main
from test_pipeline_support import write_inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("cache_cli")
    ckpt = write_tiny_checkpoint(root / "ckpt", seed=0)
    write_inputs(root / "in", 5, ref_size=(40, 56), pose_size=(40, 56))
    return root, ckpt


def argv(setup, command: str, *flags: str) -> list[str]:
    root, ckpt = setup
    return [command, "--ckpt_dir", str(ckpt), "--input_dir", str(root / "in"), "--frame_num", "5",
            "--size", "832*480", "--sample_steps", "4", "--device", "cpu", "--prompt", "dance", *flags]


def one_error_line(capsys, args) -> str:
    assert main(args) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_refusals_are_one_line(setup, capsys, tmp_path):
    out = str(tmp_path / "o.mp4")
    assert "--step_cache magcache needs --cache_ratios FILE" in one_error_line(
        capsys, argv(setup, "generate", "--step_cache", "magcache", "--save_file", out))
    assert "drop --batch_guidance" in one_error_line(
        capsys, argv(setup, "generate", "--step_cache", "fbcache", "--batch_guidance", "--save_file", out))
    assert "--cache_ratios: cannot read" in one_error_line(
        capsys, argv(setup, "generate", "--step_cache", "magcache", "--cache_ratios", str(tmp_path / "no.json"),
                     "--save_file", out))
    assert "calibrate-cache measures an uncached run" in one_error_line(
        capsys, argv(setup, "calibrate-cache", "--step_cache", "fbcache", "--out", str(tmp_path / "r.json")))


def test_calibrate_cache_writes_the_ratios_of_the_run(setup, tmp_path):
    ratios = tmp_path / "ratios.json"
    assert main(argv(setup, "calibrate-cache", "--out", str(ratios))) == 0
    written = json.loads(ratios.read_text())
    assert written["steps"] == 4 and len(written["passes"]["cond"]) == 4
    assert written["passes"]["cond"][0] == 1.0 and any(r != 1.0 for r in written["passes"]["cond"][1:])


def test_generate_with_magcache_logs_the_skipped_forwards(setup, tmp_path, caplog):
    from steadydancer.models.step_cache import write_cache_ratios

    ratios = write_cache_ratios(tmp_path / "ratios.json", {name: [1.0, 0.99, 0.98, 0.97] for name in
                                                           ("cond", "uncond_text", "uncond_pose")}, steps=4)
    out = tmp_path / "cached.mp4"
    with caplog.at_level(logging.INFO):
        assert main(argv(setup, "generate", "--step_cache", "magcache", "--cache_ratios", str(ratios),
                         "--cache_threshold", "10", "--save_file", str(out))) == 0
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step cache:")]
    assert len(line) == 1 and out.is_file()
    skipped, total = [int(w) for w in line[0].split() if w.isdigit()]
    # 4 steps, pose pass at step 1: 9 forwards; from step 1 on (retention 0.2 x 4) the cond and
    # negative-text passes reuse their residual, at most 3 in a row; the pose pass's first forward runs
    assert total == 9 and 0 < skipped < total


def test_generate_with_taylorseer_logs_its_schedule(setup, tmp_path, caplog, capsys):
    """--cache_interval 1 through the command line is the uncached run; 4 steps with the default
    interval extrapolate step 3 of the cond and negative-text passes (diffusers' schedule)."""
    assert "--cache_interval is for --step_cache taylorseer" in one_error_line(
        capsys, argv(setup, "generate", "--step_cache", "fbcache", "--cache_interval", "2",
                     "--save_file", str(tmp_path / "x.mp4")))
    out = tmp_path / "taylor.mp4"
    with caplog.at_level(logging.INFO):
        assert main(argv(setup, "generate", "--step_cache", "taylorseer", "--save_file", str(out))) == 0
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step cache:")]
    assert line == ["step cache: 2 of 9 DiT forwards skipped"] and out.is_file()
