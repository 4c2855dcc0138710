"""prepare_inputs / steadydancer prepare: the input folder, keypoints reuse, errors, a real clip."""

from __future__ import annotations

import json
import os
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
    """A reference image and a driving video of one pair by name (images/drive.png, drive/video.mp4)."""
    image = tmp_path / "images" / "drive.png"
    image.parent.mkdir()
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
    expected = {"ref_image.png", "driving_video.mp4", "prompt.txt", "keypoints.json", "all.mp4", "provenance.json",
                "positive", "negative", "positive/single.mp4", "negative/single_aug.mp4"}
    expected |= {f"{s}/{i:04d}.jpg" for s in ("positive", "negative") for i in range(4)}
    assert names == expected
    # the source frame each pose frame shows: frames 1..4 (--align_frame 1, --max_frame 5)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["frame_indices"] == [1, 2, 3, 4] and provenance["source_video"] == str(video.absolute())
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

    # second run, same files and detector: keypoints.json is reused and nothing is detected
    def no_detector(*args, **kwargs):
        raise AssertionError("a detector was constructed")

    import steadydancer.pose.detect as detect

    monkeypatch.setattr(detect, "make_detector", no_detector)
    before = (out / "negative" / "0000.jpg").read_bytes()
    again = FakeDetector()
    prepare_inputs(image, video, out, prompt="new prompt", align_frame=1, max_frame=5, seed=0,
                   detector=again, progress=False)
    assert again.calls == 0
    assert (out / "prompt.txt").read_text().strip() == "new prompt"
    assert (out / "negative" / "0000.jpg").read_bytes() == before  # same seed, same negative stream
    prepare_inputs(image, video, out, align_frame=1, max_frame=5, seed=1, detector=again, progress=False)
    assert again.calls == 0 and (out / "negative" / "0000.jpg").read_bytes() != before
    # an edited prompt.txt survives a re-run for the same reference image
    (out / "prompt.txt").write_text("edited by hand\n")
    prepare_inputs(image, video, out, align_frame=3, max_frame=5, detector=again, progress=False)
    assert (out / "prompt.txt").read_text().strip() == "edited by hand"


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


def _frames_of(video: Path) -> int:
    return len(read_video(video)[0])


def test_keypoints_are_reused_only_for_the_same_image_video_and_detector(inputs, tmp_path, caplog):
    """The stale-pose bug: another video or image of the same size must be detected again."""
    image, video = inputs
    out = tmp_path / "out"
    prepare_inputs(image, video, out, max_frame=3, detector=FakeDetector(), progress=False)
    recorded = load_keypoints(out / "keypoints.json").source
    assert recorded["video"]["sha256"] and recorded["image"]["bytes"] == image.stat().st_size
    assert recorded["detector"]["backend"] == "FakeDetector" and recorded["frames"] == {"count": 3, "to_end": False}

    # another video with the same size and frame count, but other pixels and another fps
    other_video = tmp_path / "other" / "video.mp4"
    write_video(other_video, [np.full((48, 64, 3), 200 - 10 * i, np.uint8) for i in range(6)], fps=30)
    detector = FakeDetector()
    with caplog.at_level("INFO"):
        prepare_inputs(image, other_video, out, max_frame=3, detector=detector, progress=False)
    assert detector.calls == 1 + 3 and "the driving video changed" in caplog.text
    assert load_keypoints(out / "keypoints.json").fps == pytest.approx(30)

    # another reference image of the same size
    other_image = tmp_path / "images" / "other.png"
    cv2.imwrite(str(other_image), np.full((96, 64, 3), 30, np.uint8))
    detector = FakeDetector()
    prepare_inputs(other_image, other_video, out, max_frame=3, detector=detector, progress=False)
    assert detector.calls == 1 + 3

    # another detector (or detector setting)
    detector = FakeDetector()
    prepare_inputs(other_image, other_video, out, max_frame=3, detector=detector, detect_resolution=512,
                   progress=False)
    assert detector.calls == 1 + 3
    assert load_keypoints(out / "keypoints.json").source["detector"]["detect_resolution"] == 512


def test_a_larger_max_frame_detects_only_the_missing_frames(inputs, tmp_path):
    image, video = inputs
    out = tmp_path / "out"
    prepare_inputs(image, video, out, max_frame=2, detector=FakeDetector(), progress=False)
    first = load_keypoints(out / "keypoints.json")
    detector = FakeDetector()
    prepare_inputs(image, video, out, max_frame=None, detector=detector, progress=False)
    assert detector.calls == 4  # frames 2..5 only
    keypoints = load_keypoints(out / "keypoints.json")
    assert len(keypoints.frames) == 6 and keypoints.source["frames"] == {"count": 6, "to_end": True}
    assert keypoints.frames[1].to_dict() == first.frames[1].to_dict()  # the earlier frames are kept
    assert len(list((out / "positive").glob("*.jpg"))) == 6
    detector = FakeDetector()  # the whole video is covered now: nothing more to detect
    prepare_inputs(image, video, out, max_frame=100, detector=detector, progress=False)
    assert detector.calls == 0

    # a file that stopped exactly at the video's end without knowing it (no frame count in the
    # header): asking for more finds nothing new and is not an error
    data = json.loads((out / "keypoints.json").read_text())
    data["source"]["frames"]["to_end"] = False
    (out / "keypoints.json").write_text(json.dumps(data))
    detector = FakeDetector()
    prepare_inputs(image, video, out, max_frame=None, detector=detector, progress=False)
    assert detector.calls == 0 and load_keypoints(out / "keypoints.json").source["frames"]["to_end"]


def test_target_fps_resamples_the_driving_video(inputs, tmp_path):
    """12.5 fps -> 25 fps repeats each frame; -> 6.25 fps keeps every other frame (real speed kept)."""
    from steadydancer.pose.video import iter_video, resampled_source_index

    image, video = inputs  # 6 frames at 12.5 fps, frame i filled with 10*i
    assert [resampled_source_index(j, 30, 16) for j in range(6)] == [0, 1, 3, 5, 7, 9]
    assert [round(f.mean() / 10) for f in iter_video(video, target_fps=6.25)] == [0, 2, 4]
    assert len(list(iter_video(video, target_fps=25))) == 12
    out = tmp_path / "out"
    detector = FakeDetector()
    prepare_inputs(image, video, out, max_frame=None, target_fps=25, detector=detector, progress=False)
    keypoints = load_keypoints(out / "keypoints.json")
    assert detector.calls == 1 + 12 and len(keypoints.frames) == 12 and keypoints.fps == 25
    assert keypoints.source["target_fps"] == 25
    frames, fps = read_video(out / "positive" / "single.mp4")
    assert len(frames) == 12 and fps == pytest.approx(25)
    assert _frames_of(out / "all.mp4") == 12
    detector = FakeDetector()  # another rate: detected again
    prepare_inputs(image, video, out, max_frame=None, target_fps=6.25, detector=detector, progress=False)
    assert detector.calls == 1 + 3
    with pytest.raises(InputError, match="--target_fps must be a positive"):
        prepare_inputs(image, video, out, target_fps=0, detector=FakeDetector(), progress=False)


def test_a_keypoints_file_without_source_record_is_used_as_given(inputs, tmp_path, caplog):
    """Poses from another tool (no source record) are used as they are, with a warning."""
    image, video = inputs
    out = tmp_path / "out"
    prepare_inputs(image, video, out, max_frame=3, detector=FakeDetector(), progress=False)
    data = json.loads((out / "keypoints.json").read_text())
    del data["source"]
    (out / "keypoints.json").write_text(json.dumps(data))
    detector = FakeDetector()
    with caplog.at_level("WARNING"):
        prepare_inputs(image, video, out, max_frame=3, detector=detector, progress=False)
    assert detector.calls == 0 and "no record of what it was made from" in caplog.text
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(InputError, match="does not fit"):
        prepare_inputs(small, video, out, progress=False, detector=FakeDetector())


def test_prompt_comes_from_the_pair_never_from_another_video(inputs, tmp_path, caplog):
    image, video = inputs
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        prepare_inputs(image, video, out, max_frame=2, detector=FakeDetector(), progress=False)
    assert (out / "prompt.txt").read_text().strip() == "a person dancing"
    assert "same pair id" in caplog.text
    caplog.clear()
    stranger = tmp_path / "images" / "stranger.png"  # a cross pairing: the video's prompt is not its
    cv2.imwrite(str(stranger), np.full((96, 64, 3), 90, np.uint8))
    with caplog.at_level("INFO"):
        prepare_inputs(stranger, video, tmp_path / "cross", max_frame=2, detector=FakeDetector(), progress=False)
    assert (tmp_path / "cross" / "prompt.txt").read_text() == ""
    assert "describes the driving video's dancer" in caplog.text
    (tmp_path / "images" / "stranger.txt").write_text("a woman in a red dress\n")
    prepare_inputs(stranger, video, tmp_path / "cross2", max_frame=2, detector=FakeDetector(), progress=False)
    assert (tmp_path / "cross2" / "prompt.txt").read_text().strip() == "a woman in a red dress"


def test_out_must_not_be_a_folder_with_other_files(inputs, tmp_path):
    """A user's folder is never replaced: only a new, empty or earlier prepared folder is written."""
    image, video = inputs
    mine = tmp_path / "my_stuff"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="holds files that prepare did not write \\(thesis.tex\\)"):
        prepare_inputs(image, video, mine, max_frame=2, detector=FakeDetector(), progress=False)
    assert (mine / "thesis.tex").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        prepare_inputs(image, video, tmp_path / "afile", max_frame=2, detector=FakeDetector(), progress=False)


def test_out_dot_writes_into_the_current_folder(inputs, tmp_path, monkeypatch):
    image, video = inputs
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert prepare_inputs(image, video, ".", max_frame=2, detector=FakeDetector(), progress=False) == here
    assert (here / "positive" / "0001.jpg").is_file() and (here / "keypoints.json").is_file()
    assert Path.cwd() == here and not list(here.glob(".*"))  # still there, no temporary left
    detector = FakeDetector()  # again, in place: the poses are reused
    prepare_inputs(image, video, ".", max_frame=2, seed=3, detector=detector, progress=False)
    assert detector.calls == 0 and not list(here.glob(".*"))


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


def test_out_in_a_read_only_folder_is_one_line(inputs, tmp_path, monkeypatch):
    """Checked before any work (the tests run as root, who may write anywhere: access is faked)."""
    image, video = inputs
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    detector = FakeDetector()
    with pytest.raises(InputError, match=f"--out {locked / 'out'}: cannot write in {locked}"):
        prepare_inputs(image, video, locked / "out", max_frame=2, detector=detector, progress=False)
    assert detector.calls == 0
