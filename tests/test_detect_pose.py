"""detect_pose / build_pose: resizing, normalisation, thresholds, person ordering, errors."""

from __future__ import annotations

import numpy as np
import pytest

from steadydancer.errors import InputError
from steadydancer.pose.detect import (
    Detector,
    build_pose,
    count_people,
    detect_pose,
    empty_pose,
    make_detector,
    prominence,
    resize_for_detection,
)
from steadydancer.pose.detect.layout import coco_wholebody_to_openpose


def _person(x0: float, y0: float, size: float, score: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """One fake person: body points spread over a size x size square at (x0, y0)."""
    rng = np.random.default_rng(int(x0 + 7 * y0))
    points = np.empty((134, 2))
    points[:18] = [x0, y0] + rng.uniform(0, size, (18, 2))
    points[:18][0] = [x0, y0]
    points[:18][1] = [x0 + size, y0 + size]
    points[18:] = [x0 + size / 2, y0 + size / 2]
    return points, np.full(134, score)


class FakeDetector(Detector):
    name = "fake"

    def __init__(self, people: list[tuple[np.ndarray, np.ndarray]]):
        self.people = people
        self.seen_shape = None

    def detect(self, image_bgr):
        self.seen_shape = image_bgr.shape
        if not self.people:
            return np.zeros((0, 134, 2)), np.zeros((0, 134))
        return np.stack([p for p, _ in self.people]), np.stack([s for _, s in self.people])


def test_resize_for_detection_matches_official_rounding():
    image = np.zeros((720, 1280, 3), np.uint8)
    assert resize_for_detection(image, 1024).shape == (1024, 1792, 3)  # 1820.4 -> 28 * 64
    assert resize_for_detection(np.zeros((1184, 864, 3), np.uint8), 1024).shape == (1408, 1024, 3)
    assert resize_for_detection(np.zeros((2000, 1500, 3), np.uint8), 512).shape == (704, 512, 3)


def test_detect_pose_normalises_by_the_resized_image():
    detector = FakeDetector([_person(179.2, 102.4, 400)])
    pose = detect_pose(detector, np.zeros((720, 1280, 3), np.uint8), detect_resolution=1024)
    assert detector.seen_shape == (1024, 1792, 3)
    assert pose["bodies"]["candidate"][0] == pytest.approx([179.2 / 1792, 102.4 / 1024])
    assert pose["bodies"]["subset"] == [[float(j) for j in range(18)]]
    assert len(pose["hands"]) == 2 and all(len(h) == 21 for h in pose["hands"])
    assert len(pose["faces"]) == 1 and len(pose["faces"][0]) == 68
    assert len(pose["scores"]["body"]) == 18 and all(isinstance(s, float) for s in pose["scores"]["body"])


def test_threshold_marks_points_missing():
    points, scores = _person(10, 10, 100)
    scores[3] = 0.35  # not above the threshold: missing (the official test is "> 0.35")
    scores[4] = 0.36
    scores[92:97] = 0.1  # five left-hand points
    scores[30] = 0.0  # one face point
    pose = build_pose(points[None], scores[None], 200, 100)
    subset = pose["bodies"]["subset"][0]
    assert subset[3] == -1 and subset[4] == 4
    # Body coordinates stay (as in the official code); subset says what is missing.
    assert pose["bodies"]["candidate"][3] == pytest.approx(list(points[3] / [200, 100]))
    assert pose["hands"][0][:5] == [[-1.0, -1.0]] * 5 and pose["hands"][0][5] != [-1.0, -1.0]
    assert pose["faces"][0][6] == [-1.0, -1.0]
    assert pose["scores"]["hands"][0][0] == pytest.approx(0.1)
    pose = build_pose(points[None], scores[None], 200, 100, threshold=0.05)
    assert pose["hands"][0][0] != [-1.0, -1.0]


def test_most_prominent_person_first_and_only_unless_all_people():
    small = _person(0, 0, 50)
    large = _person(300, 300, 200, score=0.8)
    faint_large = _person(600, 0, 220, score=0.36)
    keypoints = np.stack([small[0], faint_large[0], large[0]])
    scores = np.stack([small[1], faint_large[1], large[1]])
    expected = prominence(keypoints, scores, 0.35)
    assert expected.argmax() == 2
    pose = build_pose(keypoints, scores, 1000, 1000)
    assert count_people(pose) == 1
    assert pose["bodies"]["candidate"][0] == pytest.approx([0.3, 0.3])
    everyone = build_pose(keypoints, scores, 1000, 1000, all_people=True)
    assert count_people(everyone) == 3
    assert len(everyone["bodies"]["candidate"]) == 54 and len(everyone["hands"]) == 6
    # order: large (0.8 x 200^2), faint large (0.36 x 220^2), small
    firsts = np.array(everyone["bodies"]["candidate"][0::18])
    np.testing.assert_allclose(firsts, [[0.3, 0.3], [0.6, 0.0], [0.0, 0.0]])
    assert everyone["bodies"]["subset"][1][:3] == [18.0, 19.0, 20.0]


def test_nobody_found_gives_an_empty_valid_pose():
    pose = detect_pose(FakeDetector([]), np.zeros((64, 64, 3), np.uint8), detect_resolution=64)
    assert pose == empty_pose() and count_people(pose) == 0


def test_neck_is_mean_of_shoulders_and_needs_both():
    coco = np.zeros((2, 133, 2))
    coco[:, 5] = [10, 20]  # left shoulder
    coco[:, 6] = [30, 40]  # right shoulder
    coco[:, 0] = [1, 2]  # nose
    coco[:, 91] = [7, 7]  # left-hand wrist
    scores = np.full((2, 133), 0.9)
    scores[1, 6] = 0.3
    points, point_scores = coco_wholebody_to_openpose(coco, scores)
    assert points.shape == (2, 134, 2)
    assert points[0, 1] == pytest.approx([20, 30])
    assert point_scores[:, 1].tolist() == [1.0, 0.0]
    assert points[0, 5] == pytest.approx([10, 20]) and points[0, 2] == pytest.approx([30, 40])  # L/R shoulder
    assert points[0, 0] == pytest.approx([1, 2]) and points[0, 92] == pytest.approx([7, 7])


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="--backend"):
        make_detector("openpose")
    with pytest.raises(InputError, match="--dwpose_ckpt"):
        make_detector("onnx", dwpose_onnx=tmp_path / "missing.onnx")
    (tmp_path / "pose.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="both"):
        make_detector("onnx", dwpose_onnx=tmp_path / "pose.onnx")
    with pytest.raises(InputError, match="RGB uint8"):
        detect_pose(FakeDetector([]), np.zeros((8, 8), np.float32))


def test_pth_weights_without_mmpose_say_how_to_install(tmp_path):
    try:
        import mmpose  # noqa: F401

        pytest.skip("mmpose is installed here")
    except ImportError:
        pass
    for name in ("dw.pth", "yolox.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as info:
        make_detector(dwpose_pth=tmp_path / "dw.pth", yolox_pth=tmp_path / "yolox.pth")
    message = str(info.value)
    assert "mmpose" in message and "pip install" in message and "--dwpose_ckpt" in message
    assert "\n" not in message


def test_hands_of_several_people_are_in_dwpose_order():
    """keypoints.json keeps DWPose's layout: every person's left hand, then every right hand."""
    people = []
    for i, (x0, y0) in enumerate([(100, 100), (600, 100)]):
        points, scores = _person(x0, y0, 300 - 50 * i)  # first person the more prominent
        points[92:113] = [x0 + 1, y0 + 1]   # left hand
        points[113:134] = [x0 + 2, y0 + 2]  # right hand
        people.append((points, scores))
    keypoints = np.stack([p for p, _ in people])
    scores = np.stack([s for _, s in people])
    pose = build_pose(keypoints, scores, 1000, 1000, all_people=True)
    firsts = [tuple(np.round(np.array(h[0]) * 1000)) for h in pose["hands"]]
    assert firsts == [(101, 101), (601, 101), (102, 102), (602, 102)]
    assert len(pose["scores"]["hands"]) == 4
