"""`steadydancer benchmark`: the xdance and tiktok rows, made by the batch runner (resumable), scored
into report.json (pose stage, model loading and generation faked here; the batch runner itself runs for
real in test_batch.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import steadydancer.batch.runner as runner
import steadydancer.pipeline.run as run
import steadydancer.pipeline.tiny as tiny
import steadydancer.pose.prepare as prepare
from steadydancer.cli.main import main
from steadydancer.pose.video import read_video, write_video

from test_pipeline_support import tiny_checkpoint


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
        out_dir = Path(out_dir)
        for stream in ("positive", "negative"):
            (out_dir / stream).mkdir(parents=True, exist_ok=True)
            for i in range(17):
                Image.new("RGB", (24, 32)).save(out_dir / stream / f"{i:04d}.jpg")
        shutil.copy(image, out_dir / "ref_image.png")
        shutil.copy(video, out_dir / "driving_video.mp4")
        return out_dir

    def fake_generate(pipeline, *, image, save_file, frame_num, seed, **kw):
        calls["generate"].append((str(Path(image).parent), str(save_file), frame_num, seed))
        frames, fps = read_video(Path(image).parent / "driving_video.mp4")
        write_video(save_file, [np.clip(f.astype(int) + 5, 0, 255).astype(np.uint8) for f in frames], fps)
        return Path(save_file)

    monkeypatch.setattr(prepare, "prepare_inputs", fake_prepare)
    ckpt = tiny_checkpoint()  # written once per session; copied where the benchmark writes its own
    monkeypatch.setattr(tiny, "write_tiny_checkpoint", lambda out_dir, seed=0: shutil.copytree(ckpt, out_dir))
    monkeypatch.setattr(runner.BatchRunner, "load_models", lambda self: None)
    monkeypatch.setattr(run, "generate_to_file", fake_generate)
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
    # tiny defaults and a fixed seed when no checkpoint is given; each row made once, in OUT/rows/ROW
    assert sorted((g[2], g[3], Path(g[1]).name) for g in fakes["generate"]) == [(17, 0, f"{i}.mp4") for i in ids]
    assert sorted(p.name for p in (out / "generated").iterdir()) == [f"{i}.mp4" for i in ids]
    assert (out / "generated" / "a__clip2.mp4").resolve() == out / "rows" / "a__clip2" / "a__clip2.mp4"
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "vbench-i2v" and set(report["videos"]) == set(ids)
    assert report["aggregate"]["temporal_flickering"] is not None
    # Table 2(c)'s columns, in percent, no FVD; the recipe stated
    table = (out / "report.md").read_text()
    flicker = report["aggregate"]["temporal_flickering"] * 100
    assert "## VBench-I2V (percent)" in table and f"{flicker:.2f}" in table
    assert "FVD" not in table.split("## Recipe")[0] and "every reference image with every driving video" in table
    assert report["videos"]["b__clip2"]["reference"].endswith("b__clip2.mp4")
    assert (out / "report.json").with_suffix(".md").is_file()
    # a second run makes only what is missing
    del fakes["generate"][:]
    (out / "rows" / "a__clip2" / "a__clip2.mp4").unlink()
    assert main(argv) == 0
    assert [Path(g[1]).name for g in fakes["generate"]] == ["a__clip2.mp4"]
    assert len(fakes["prepare"]) == 5   # the pose stage of that row only


def test_tiktok_cuts_humanvid_clips_and_states_its_recipe(tmp_path, fakes) -> None:
    rng = np.random.default_rng(1)
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = [rng.integers(0, 255, (32, 24, 3), dtype=np.uint8) for _ in range(30)]
    write_video(videos / "clip2.mp4", frames, 8)
    write_video(videos / "short.mp4", frames[:20], 8)  # fewer than 24 frames: skipped, as HumanVid
    out = tmp_path / "bench"
    assert main(["benchmark", "--protocol", "tiktok", "--videos", str(videos), "--out", str(out),
                 "--start", "first"]) == 0
    decoded, _ = read_video(videos / "clip2.mp4")
    # 30 frames < 24 x 3: stride 1; --start first: the reference image is driving frame 0
    assert np.array_equal(np.asarray(Image.open(out / "ref_frames" / "clip2.stride3.first.png")), decoded[0])
    clip, _ = read_video(out / "clips" / "clip2.stride3.mp4")
    assert len(clip) == 25
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "humanvid" and set(report["videos"]) == {"clip2"}
    assert report["recipe"]["reference image"].startswith("the first driving frame")
    assert report["options"]["fid_resize"] == 768 and report["options"]["fid_frames"] == 24
    assert report["aggregate"]["psnr"] > 20   # the fake generation is the clip + 5


def test_xdance_table_is_vbench_in_percent_without_fvd(tmp_path, fakes) -> None:
    from steadydancer.eval.report import markdown_table

    report = {"protocol": "vbench-i2v", "table": "xdance", "aggregate": {"i2v_subject": 0.9321, "fvd_set": 123.0},
              "conventions": {}, "skipped": {}, "options": {"vbench_version": "current"},
              "notes": {"fvd_set": "not a column"}}
    table = markdown_table(report, "ours")
    assert "| ours | 93.21 |" in table and "FVD" not in table.split("## Recipe")[0]


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "xdance"], "--images: folder of reference images needed"),
    (["--protocol", "tiktok", "--save_file", "x.mp4"], "--save_file: the benchmark sets it"),
])
def test_bad_benchmark_input_is_one_line(tmp_path, fakes, capsys, argv, message) -> None:
    _, videos = _samples(tmp_path / "samples")
    assert main(["benchmark", "--videos", str(videos), "--out", str(tmp_path / "o")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_benchmark_help_lists_only_flags_it_accepts(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = capsys.readouterr().out
    for refused in ("--save_file", "--image ", "--cond_pos_folder", "--input_dir"):
        assert refused not in text
    assert "--stride" in text and "--frame_sampling" in text
