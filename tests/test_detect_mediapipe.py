"""mediapipe backend on real sample frames (offline, bundled models)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mediapipe")

from steadydancer.pose.detect import count_people, detect_pose, make_detector  # noqa: E402
from steadydancer.pose.video import iter_video  # noqa: E402


@pytest.fixture(scope="module")
def detector():
    with make_detector() as built:  # "auto" with no weights: mediapipe
        assert built.name == "mediapipe"
        yield built


def _frame(samples_dir, index: int) -> np.ndarray:
    for i, frame in enumerate(iter_video(samples_dir / "videos" / "00001" / "video.mp4", max_frames=index + 1)):
        if i == index:
            return frame
    raise AssertionError("video too short")


def test_dancer_found_with_neck_between_shoulders_and_hands(samples_dir, detector):
    frame = _frame(samples_dir, 60)
    pose = detect_pose(detector, frame, detect_resolution=1024)
    assert count_people(pose) == 1
    body = np.array(pose["bodies"]["candidate"])
    subset = pose["bodies"]["subset"][0]
    for j in (0, 1, 2, 5, 14, 15):  # nose, neck, shoulders, eyes
        assert subset[j] == j
    nose, neck, right_shoulder, left_shoulder = body[0], body[1], body[2], body[5]
    assert neck == pytest.approx((right_shoulder + left_shoulder) / 2)
    assert min(right_shoulder[0], left_shoulder[0]) < neck[0] < max(right_shoulder[0], left_shoulder[0])
    assert nose[1] < neck[1]  # head above the neck
    # facing the camera: the person's right shoulder is on the image's left
    assert right_shoulder[0] < left_shoulder[0]
    assert 0.2 < abs(left_shoulder[0] - right_shoulder[0]) < 0.9
    hands = np.array(pose["hands"])
    assert hands.shape == (2, 21, 2)
    for hand, wrist, other_wrist in ((hands[0], body[7], body[4]), (hands[1], body[4], body[7])):
        # the person's left hand (listed first, as DWPose does) sits at the left wrist (body 7)
        assert (hand >= 0).all(axis=1).sum() >= 15  # a few fingertips may leave the frame
        assert np.linalg.norm(hand[0] - wrist) < min(0.15, np.linalg.norm(hand[0] - other_wrist) / 3)
        present = hand[(hand >= 0).all(axis=1)]
        assert np.ptp(present[:, 1]) < 0.25  # a hand, not a limb
    face = np.array(pose["faces"][0])
    assert (face >= 0).all()
    assert face[8, 1] > face[30, 1] > face[27, 1]  # chin below nose tip below nose bridge
    assert face[36, 0] < face[45, 0]  # right eye's outer corner on the image's left


def test_reference_image_upper_body(samples_dir, detector):
    import cv2

    image = cv2.cvtColor(cv2.imread(str(samples_dir / "images" / "00001.png")), cv2.COLOR_BGR2RGB)
    pose = detect_pose(detector, image, detect_resolution=1024)
    assert count_people(pose) == 1
    subset = pose["bodies"]["subset"][0]
    assert all(subset[j] >= 0 for j in (0, 1, 2, 5))
    # wrists are below the frame in this picture: missing, not invented
    body = np.array(pose["bodies"]["candidate"])
    for j in (4, 7):
        assert subset[j] == -1 or body[j][1] < 1.0


def test_empty_image_gives_empty_pose(detector):
    pose = detect_pose(detector, np.full((256, 256, 3), 128, np.uint8), detect_resolution=256)
    assert count_people(pose) == 0
