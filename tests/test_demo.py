"""`steadydancer demo`: wiring of prepare -> tiny checkpoint -> generate (stages faked; CI runs it for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

import steadydancer.pipeline.tiny as tiny
import steadydancer.pose.prepare as prepare
from steadydancer.cli import demo, generate
from steadydancer.cli.main import main


@pytest.fixture
def fakes(monkeypatch):
    calls = {}

    def fake_prepare(image, video, out_dir, prompt=None, **kw):
        calls["prepare"] = (Path(image), Path(video), Path(out_dir), prompt, kw)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return Path(out_dir)

    def fake_tiny(out_dir, seed=0):
        calls["tiny"] = (Path(out_dir), seed)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    def fake_run(args):
        calls["args"] = generate.resolve_args(args)
        return 0

    monkeypatch.setattr(prepare, "prepare_inputs", fake_prepare)
    monkeypatch.setattr(tiny, "write_tiny_checkpoint", fake_tiny)
    monkeypatch.setattr(generate, "run", fake_run)
    return calls


def test_demo_tiny_defaults(fakes, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    image, video, inputs, prompt, _ = fakes["prepare"]
    assert image == demo.demo_assets() / "ref_image.png" and video.name == "driving_video.mp4"
    assert inputs == out / "inputs" and prompt.startswith("A person")
    assert fakes["tiny"] == (out / "tiny_ckpt", 0)
    args = fakes["args"]
    assert (args.size, args.frame_num, args.sample_steps) == ("832*480", 17, 4)
    assert args.sample_shift == 3.0 and args.base_seed == 0
    assert Path(args.ckpt_dir) == out / "tiny_ckpt" and Path(args.input_dir) == out / "inputs"
    assert Path(args.save_file) == out / "demo.mp4"
    printed = capsys.readouterr().out
    assert str(out / "demo.mp4") in printed and str(out / "inputs") in printed


def test_demo_flags_win_and_existing_tiny_reused(fakes, tmp_path):
    out = tmp_path / "demo"
    (out / "tiny_ckpt").mkdir(parents=True)
    (out / "tiny_ckpt" / "config.json").write_text("{}")
    assert main(["demo", "--out", str(out), "--frame_num", "9", "--sample_solver", "dpm++"]) == 0
    assert "tiny" not in fakes
    assert fakes["args"].frame_num == 9 and fakes["args"].sample_solver == "dpm++"


def test_demo_with_real_checkpoint_uses_official_defaults(fakes, tmp_path):
    ckpt = tmp_path / "SteadyDancer-14B"
    ckpt.mkdir()
    assert main(["demo", "--out", str(tmp_path / "d"), "--ckpt_dir", str(ckpt)]) == 0
    args = fakes["args"]
    assert "tiny" not in fakes and args.ckpt_dir == str(ckpt)
    assert (args.size, args.frame_num, args.sample_steps, args.sample_shift) == ("1280*720", None, 40, 5.0)


def test_demo_refuses_input_flags(fakes, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--image", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --image") and "\n" not in err
    assert "prepare" not in fakes


@pytest.mark.parametrize("flags, named", [(["--size", "640*480"], "--size 640*480"),
                                          (["--frame_num", "8"], "--frame_num 8"),
                                          (["--sample_steps", "0"], "--sample_steps 0")])
def test_demo_bad_flag_stops_before_preparation(fakes, tmp_path, capsys, flags, named):
    assert main(["demo", "--out", str(tmp_path / "d"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {named}") and "\n" not in err
    assert "prepare" not in fakes and "tiny" not in fakes


def test_demo_names_its_own_backend_flag_before_preparing(fakes, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--pose_backend", "foo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --pose_backend: unknown backend 'foo'") and "--backend:" not in err
    assert "prepare" not in fakes
