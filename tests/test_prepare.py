"""prepare_inputs / steadydancer prepare: the input folder, keypoints reuse, errors, a real clip."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_pose_core import standing_pose

from steadydancer.errors import InputError
from steadydancer.pose import prepare as prepare_module
from steadydancer.pose.keypoints import load_keypoints
from steadydancer.pose.prepare import prepare_inputs
from steadydancer.pose.video import read_video, write_video


class FakeDetector:
    """Callable fake: the same standing person, shifted a little per call; nobody on call ``empty_at``."""

    def __init__(self, empty_at: set[int] = frozenset()):
        self.calls = 0
        self.empty_at = set(empty_at)

    def __call__(self, image_rgb, detect_resolution, all_people):
        self.calls += 1
        if self.calls - 1 in self.empty_at:
            return {"bodies": {"candidate": [], "subset": []}, "hands": [], "faces": []}
        return standing_pose(dx=0.01 * self.calls, scale=0.8)


@pytest.fixture
def inputs(tmp_path) -> tuple[Path, Path]:
    image = tmp_path / "ref.png"
    cv2.imwrite(str(image), np.full((96, 64, 3), 120, np.uint8))
    video = tmp_path / "drive" / "video.mp4"
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(6)]
    write_video(video, frames, fps=12.5)
    (video.parent / "prompt.txt").write_text("a person dancing\n")
    return image, video


def test_prepare_writes_the_whole_folder_then_reuses_keypoints(inputs, tmp_path, monkeypatch):
    image, video = inputs
    out = tmp_path / "out"
    detector = FakeDetector(empty_at={3})  # frame 2 (call 0 is the reference) has nobody
    prepare_inputs(image, video, out, align_frame=1, max_frame=5, detector=detector, progress=False)
    assert detector.calls == 1 + 5  # reference + each frame once, for both streams
    names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    expected = {"ref_image.png", "driving_video.mp4", "prompt.txt", "keypoints.json", "all.mp4",
                "positive", "negative", "positive/single.mp4", "negative/single_aug.mp4"}
    expected |= {f"{s}/{i:04d}.jpg" for s in ("positive", "negative") for i in range(4)}
    assert names == expected
    assert (out / "prompt.txt").read_text().strip() == "a person dancing"
    assert (out / "ref_image.png").read_bytes() == image.read_bytes()
    positive = cv2.imread(str(out / "positive" / "0000.jpg"))
    ref_h, ref_w = prepare_module.reference_size(96, 64)
    assert positive.shape == (2 * ref_h, 2 * ref_w, 3) and positive.any()
    assert not cv2.imread(str(out / "positive" / "0001.jpg")).max() > 40  # nobody: black (JPEG noise)
    frames, fps = read_video(out / "positive" / "single.mp4")
    assert len(frames) == 4 and fps == pytest.approx(12.5)
    keypoints = load_keypoints(out / "keypoints.json")
    assert len(keypoints.frames) == 5 and keypoints.driving_size == (64, 48)
    assert keypoints.reference_size == (64, 96) and not keypoints.frames[2].has_person()

    # second run: keypoints.json is reused and no detector is even constructed
    def no_detector(*args, **kwargs):
        raise AssertionError("a detector was constructed")

    import steadydancer.pose.detect as detect

    monkeypatch.setattr(detect, "make_detector", no_detector)
    before = (out / "negative" / "0000.jpg").read_bytes()
    prepare_inputs(image, video, out, prompt="new prompt", align_frame=1, max_frame=5, seed=0,
                   progress=False)
    assert (out / "prompt.txt").read_text().strip() == "new prompt"
    assert (out / "negative" / "0000.jpg").read_bytes() == before  # same seed, same negative stream
    prepare_inputs(image, video, out, align_frame=1, max_frame=5, seed=1, progress=False)
    assert (out / "negative" / "0000.jpg").read_bytes() != before


def test_errors_are_one_line_and_leave_no_folder(inputs, tmp_path):
    image, video = inputs
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no person found in the reference"):
        prepare_inputs(image, video, out, detector=FakeDetector(empty_at={0}), progress=False)
    assert not out.exists()
    with pytest.raises(InputError, match="nobody found in driving frame 0"):
        prepare_inputs(image, video, out, detector=FakeDetector(empty_at={1}), progress=False)
    with pytest.raises(InputError, match="--align_frame 9"):
        prepare_inputs(image, video, out, align_frame=9, detector=FakeDetector(), progress=False)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read reference image"):
        prepare_inputs(tmp_path / "broken.png", video, out, detector=FakeDetector(), progress=False)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="broken.mp4"):
        prepare_inputs(image, tmp_path / "broken.mp4", out, detector=FakeDetector(), progress=False)
    with pytest.raises(InputError, match="still image"):
        prepare_inputs(image, image, out, detector=FakeDetector(), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_reused_keypoints_must_match_the_inputs(inputs, tmp_path):
    image, video = inputs
    out = tmp_path / "out"
    prepare_inputs(image, video, out, max_frame=2, detector=FakeDetector(), progress=False)
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(InputError, match="keypoints.json was made for a 64x96 reference"):
        prepare_inputs(other, video, out, progress=False)
    assert (out / "positive" / "0000.jpg").is_file()  # the earlier result is untouched


def test_cli_prepare_reports_input_errors(tmp_path, capsys):
    from steadydancer.cli.main import main

    code = main(["prepare", "--image", str(tmp_path / "missing.png"), "--video", "v.mp4",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: reference image not found: {tmp_path / 'missing.png'}"]


def test_prepare_on_real_sample_clip(samples_dir, tmp_path):
    """Real detector on image 00002 + three frames of video 00002: frame 0 is pinned to the reference."""
    try:
        from steadydancer.pose.detect import make_detector

        detector = make_detector("auto")
    except Exception as exc:  # no bundled detector installed here
        pytest.skip(f"no pose detector available: {exc}")
    out = tmp_path / "real"
    with detector:
        prepare_inputs(samples_dir / "images" / "00002.png", samples_dir / "videos" / "00002" / "video.mp4",
                       out, max_frame=3, detector=detector, progress=False)
    keypoints = load_keypoints(out / "keypoints.json")
    ref_neck = keypoints.reference.neck()
    assert ref_neck is not None and len(keypoints.frames) == 3
    assert json.loads((out / "keypoints.json").read_text())["driving"]["fps"] == pytest.approx(24.0)
    # the neck joint of positive frame 0, found by its colour (palette entry 1, RGB (0, 85, 255))
    frame = cv2.imread(str(out / "positive" / "0000.jpg"))[:, :, ::-1].astype(int)
    near = (np.abs(frame - np.array([0, 85, 255])).max(-1) < 40).astype(np.uint8)
    # erosion keeps the 9 px joint disc and removes the 2 px hand lines of a similar colour
    ys, xs = np.nonzero(cv2.erode(near, np.ones((3, 3), np.uint8)))
    assert len(xs) > 0
    height, width = frame.shape[:2]
    assert abs(np.median(xs) / width - ref_neck[0]) < 0.03
    assert abs(np.median(ys) / height - ref_neck[1]) < 0.03


def test_official_scripts_reuse_keypoints(inputs, tmp_path):
    """pose_align_withdiffaug.py flags -> single.mp4, single_aug.mp4, all.mp4; dump_video_images -> jpgs."""
    from steadydancer.pose.scripts import dump_video_images, pose_align_main

    image, video = inputs
    prepare_inputs(image, video, tmp_path / "prep", max_frame=4, detector=FakeDetector(), progress=False)
    out = tmp_path / "negative"
    code = pose_align_main(["--imgfn_refer", str(image), "--vidfn", str(video), "--outfn", str(out / "all.mp4"),
                            "--outfn_align_pose_video", str(out / "single.mp4"), "--max_frame", "4",
                            "--align_frame", "1", "--seed", "0",
                            "--keypoints", str(tmp_path / "prep" / "keypoints.json")], with_aug=True)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"all.mp4", "single.mp4", "single_aug.mp4"}
    assert dump_video_images(out / "single_aug.mp4", out) == 3
    assert (out / "0002.jpg").is_file() and not (out / "0003.jpg").exists()
