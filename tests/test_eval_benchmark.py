"""`steadydancer benchmark`: the xdance and tiktok rows, resumable generation, scoring into report.json
(preparation and generation faked here; the whole path on the tiny checkpoint is a manual run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import steadydancer.cli.generate as generate
import steadydancer.pipeline.tiny as tiny
import steadydancer.pose.prepare as prepare
from steadydancer.cli.main import main
from steadydancer.pose.video import read_video, write_video


def _samples(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, videos = root / "images", root / "videos"
    images.mkdir(parents=True)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)).save(images / f"{name}.png")
    (videos / "00001").mkdir(parents=True)
    write_video(videos / "00001" / "video.mp4", [rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)] * 6, 8)
    (videos / "00001" / "prompt.txt").write_text("a dancer\n")
    write_video(videos / "clip2.mp4", [rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)] * 6, 8)
    return images, videos


@pytest.fixture
def fakes(monkeypatch):
    calls = {"prepare": [], "generate": []}

    def fake_prepare(image, video, out_dir, prompt=None, **kw):
        calls["prepare"].append((Path(image).name, Path(video).name, prompt, kw))
        (Path(out_dir) / "positive").mkdir(parents=True)
        shutil.copy(image, Path(out_dir) / "ref_image.png")
        shutil.copy(video, Path(out_dir) / "driving_video.mp4")
        return Path(out_dir)

    def fake_tiny(out_dir, seed=0):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    def fake_run(args):
        calls["generate"].append((args.input_dir, args.save_file, args.frame_num, args.base_seed))
        frames, fps = read_video(Path(args.input_dir) / "driving_video.mp4")
        write_video(args.save_file, [np.clip(f.astype(int) + 5, 0, 255).astype(np.uint8) for f in frames], fps)
        return 0

    monkeypatch.setattr(prepare, "prepare_inputs", fake_prepare)
    monkeypatch.setattr(tiny, "write_tiny_checkpoint", fake_tiny)
    monkeypatch.setattr(generate, "run", fake_run)
    return calls


def test_xdance_every_image_with_every_video_resumes_and_scores(tmp_path, fakes, capsys) -> None:
    images, videos = _samples(tmp_path / "samples")
    out = tmp_path / "bench"
    argv = ["benchmark", "--protocol", "xdance", "--images", str(images), "--videos", str(videos),
            "--out", str(out), "--max_frame", "6"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    ids = [row["id"] for row in manifest["rows"]]
    assert ids == ["a__00001", "a__clip2", "b__00001", "b__clip2"]
    assert [row["prompt"] for row in manifest["rows"]] == ["a dancer", None, "a dancer", None]
    assert len(fakes["prepare"]) == 4 and fakes["prepare"][0][3]["max_frame"] == 6
    # tiny defaults and a fixed seed when no checkpoint is given
    assert {(g[2], g[3]) for g in fakes["generate"]} == {(17, 0)}
    assert sorted(p.name for p in (out / "generated").iterdir()) == [f"{i}.mp4" for i in ids]
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "vbench-i2v" and set(report["videos"]) == set(ids)
    assert report["aggregate"]["temporal_flickering"] is not None
    assert report["videos"]["b__clip2"]["reference"].endswith("b__clip2.mp4")
    assert (out / "report.json").with_suffix(".md").is_file()
    # a second run generates nothing again
    del fakes["generate"][:]
    (out / "generated" / "a__clip2.mp4").unlink()
    assert main(argv) == 0
    assert [Path(g[1]).name for g in fakes["generate"]] == ["a__clip2.mp4"]
    assert len(fakes["prepare"]) == 4   # input folders reused


def test_tiktok_animates_each_video_from_its_first_frame(tmp_path, fakes) -> None:
    _, videos = _samples(tmp_path / "samples")
    out = tmp_path / "bench"
    assert main(["benchmark", "--protocol", "tiktok", "--videos", str(videos), "--out", str(out)]) == 0
    first = np.asarray(Image.open(out / "first_frames" / "clip2.png"))
    frames, _ = read_video(videos / "clip2.mp4")
    assert np.array_equal(first, frames[0])
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "humanvid" and set(report["videos"]) == {"00001", "clip2"}
    assert report["aggregate"]["psnr"] > 20   # the fake generation is the video + 5


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "xdance"], "--images: folder of reference images needed"),
    (["--protocol", "tiktok", "--save_file", "x.mp4"], "--save_file: the benchmark sets it"),
])
def test_bad_benchmark_input_is_one_line(tmp_path, fakes, capsys, argv, message) -> None:
    _, videos = _samples(tmp_path / "samples")
    assert main(["benchmark", "--videos", str(videos), "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
