"""Pose core: pixel-exact drawing against the official frames, alignment, augmentation, keypoints file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import parity_cases

from steadydancer.errors import InputError
from steadydancer.pose.align import align_pose, compute_alignment, reference_size
from steadydancer.pose.augment import ASPECT_RANGE, SCALE_RANGE, augment_sequence
from steadydancer.pose.draw import PALETTE, draw_pose, hsv_ramp_color
from steadydancer.pose.keypoints import KeypointsFile, Pose, load_keypoints, save_keypoints

POSE_CASES = parity_cases("pose")


def standing_pose(dx: float = 0.0, scale: float = 1.0) -> dict:
    """A synthetic person (normalised coordinates), hands at the wrists, face around the nose."""
    body = np.array([[0.50, 0.15], [0.50, 0.25], [0.42, 0.25], [0.38, 0.38], [0.36, 0.50],
                     [0.58, 0.25], [0.62, 0.38], [0.64, 0.50], [0.45, 0.52], [0.45, 0.70],
                     [0.45, 0.88], [0.55, 0.52], [0.55, 0.70], [0.55, 0.88], [0.48, 0.13],
                     [0.52, 0.13], [0.46, 0.14], [0.54, 0.14]])
    body = (body - body[1]) * scale + body[1] + [dx, 0.0]
    hand = np.stack([np.linspace(0, 0.04, 21), np.linspace(0, 0.05, 21)], axis=1) * scale
    face = np.stack([np.linspace(-0.02, 0.02, 68), np.full(68, 0.0)], axis=1)
    return {"bodies": {"candidate": body.tolist(), "subset": [list(range(18))]},
            "hands": [(body[7] + hand).tolist(), (body[4] + hand).tolist()],
            "faces": [(body[0] + face).tolist()]}


@pytest.mark.parametrize("case", POSE_CASES, ids=[c.name for c in POSE_CASES])
def test_positive_frames_pixel_equal_to_official(case):
    from PIL import Image

    keypoints = load_keypoints(case / "keypoints.json")
    align_frame = json.loads((case / "meta.json").read_text()).get("align_frame", 0)
    width, height = keypoints.reference_size
    ref_h, ref_w = reference_size(height, width)
    drv_w, drv_h = keypoints.driving_size
    alignment = compute_alignment(keypoints.reference, keypoints.frames[align_frame],
                                  ref_w / ref_h, drv_w / drv_h)
    official = sorted((case / "official").glob("*.png"))
    assert len(official) == len(keypoints.frames) - align_frame
    for path, pose in zip(official, keypoints.frames[align_frame:]):
        ours = draw_pose(align_pose(pose, alignment), 2 * ref_h, 2 * ref_w)
        ref = np.asarray(Image.open(path).convert("RGB"))
        assert ours.shape == ref.shape
        assert np.array_equal(ours, ref), f"{path.name}: {(ours != ref).any(-1).sum()} pixels differ"


@pytest.mark.parametrize("case", POSE_CASES, ids=[c.name for c in POSE_CASES])
def test_pose_parity_run_case(case):
    from steadydancer.parity.pose import run_case

    errors = run_case(case)
    assert errors == {"frame_count": 0.0, "positive_drawn": 0.0, "positive_jpeg": 0.0}


def test_drawing_constants_and_missing_points():
    assert hsv_ramp_color(0, 20) == (255.0, 0.0, 0.0)
    assert hsv_ramp_color(10, 20) == (0.0, 255.0, 255.0)
    pose = Pose.from_dict(standing_pose())
    frame = draw_pose(pose, 200, 100)
    assert frame.shape == (200, 100, 3) and frame.dtype == np.uint8
    # the neck joint: palette entry 1 in OpenCV order, read back as RGB
    neck_x, neck_y = int(0.50 * 100), int(0.25 * 200)
    assert tuple(frame[neck_y, neck_x]) == tuple(PALETTE[1][::-1])
    # a missing joint (subset -1) is not drawn, nor are the limbs that need it
    pose.subset[0, 10] = -1
    ankle_x, ankle_y = int(0.45 * 100), int(0.88 * 200)
    assert frame[ankle_y, ankle_x].any()
    assert not draw_pose(pose, 200, 100)[ankle_y, ankle_x].any()
    # faces are drawn only on request
    face_free = draw_pose(pose, 200, 100)
    with_face = draw_pose(pose, 200, 100, draw_face=True)
    assert (with_face != face_free).any()
    # nobody: a black frame
    assert not draw_pose(Pose.empty(), 64, 32).any()


def test_alignment_maps_align_frame_onto_reference():
    reference = Pose.from_dict(standing_pose())
    driving = Pose.from_dict(standing_pose(dx=0.1, scale=0.5))
    alignment = compute_alignment(reference, driving, 1.0, 1.0)
    assert alignment.scales == pytest.approx({k: 2.0 for k in alignment.scales})
    aligned = align_pose(driving, alignment)
    # same aspect on both sides: the align frame becomes the reference, point for point
    # (OpenCV's rotation matrix is single precision, as in the official code)
    np.testing.assert_allclose(aligned.candidate, reference.candidate, atol=1e-6)
    np.testing.assert_allclose(aligned.hands, reference.hands, atol=1e-6)
    # a missing wrist stays missing; the neck stays put in every frame
    driving.subset[0, 4] = -1
    driving.candidate[4] = -1
    later = align_pose(driving, alignment)
    assert later.subset[0, 4] == -1
    np.testing.assert_allclose(later.candidate[1], reference.candidate[1])


def test_reference_size_matches_official_formula():
    assert reference_size(1344, 768) == (1008, 576)
    assert reference_size(1184, 864) == (896, 656)
    h, w = reference_size(720, 1280)
    assert h % 16 == 0 and w % 16 == 0 and abs(h * w - 1024 * 576) < 0.05 * 1024 * 576


def test_negative_stream_ranges_neck_and_seed():
    poses = [Pose.from_dict(standing_pose(dx=0.01 * i)) for i in range(40)]
    negative, factors = augment_sequence(poses, seed=7)
    again, factors_again = augment_sequence(poses, seed=7)
    other, _ = augment_sequence(poses, seed=8)
    assert factors == factors_again
    assert all(np.array_equal(a.candidate, b.candidate) for a, b in zip(negative, again))
    assert not all(np.array_equal(a.candidate, b.candidate) for a, b in zip(negative, other))
    scales, aspects = [], []
    for pose, aug, used in zip(poses, negative, factors):
        np.testing.assert_allclose(aug.candidate[1], pose.candidate[1], atol=1e-12)  # neck fixed
        before = pose.candidate[10] - pose.candidate[1]
        after = aug.candidate[10] - aug.candidate[1]
        scale = after[1] / before[1]
        aspect = after[0] / before[0] / scale
        assert scale == pytest.approx(used["scale"]) and aspect == pytest.approx(used["aspect"])
        scales.append(scale)
        aspects.append(aspect)
    assert SCALE_RANGE[0] <= min(scales) and max(scales) <= SCALE_RANGE[1]
    assert ASPECT_RANGE[0] <= min(aspects) and max(aspects) <= ASPECT_RANGE[1]
    assert max(scales) - min(scales) > 0.2 and max(aspects) - min(aspects) > 0.3  # really random


def test_keypoints_round_trip(tmp_path):
    pose = standing_pose()
    pose["scores"] = {"body": [0.9] * 18, "hands": [[0.8] * 21, [0.7] * 21], "faces": [[0.5] * 68]}
    empty = {"bodies": {"candidate": [], "subset": []}, "hands": [], "faces": []}
    original = KeypointsFile((640, 480), Pose.from_dict(pose), (320, 240), 23.976,
                             [Pose.from_dict(pose), Pose.from_dict(empty)])
    save_keypoints(tmp_path / "keypoints.json", original)
    data = json.loads((tmp_path / "keypoints.json").read_text())
    assert data["format"] == "steadydancer-pose-v1"
    assert data["driving"]["frames"][1]["bodies"]["subset"] == [[-1] * 18]
    loaded = load_keypoints(tmp_path / "keypoints.json")
    assert loaded.reference_size == (640, 480) and loaded.driving_size == (320, 240)
    assert loaded.fps == 23.976 and len(loaded.frames) == 2
    assert np.array_equal(loaded.reference.candidate, original.reference.candidate)
    assert np.array_equal(loaded.frames[0].hands, original.frames[0].hands)
    assert loaded.reference.scores == pose["scores"]
    assert not loaded.frames[1].has_person() and loaded.frames[0].has_person()
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="bad.json"):
        load_keypoints(tmp_path / "bad.json")


def test_all_people_are_aligned_and_drawn():
    one, two = standing_pose(dx=-0.2, scale=0.6), standing_pose(dx=0.2, scale=0.6)
    both = {"bodies": {"candidate": one["bodies"]["candidate"] + two["bodies"]["candidate"],
                       "subset": [list(range(18)), list(range(18, 36))]},
            # DWPose order: the left hands of both, then the right hands
            "hands": [one["hands"][0], two["hands"][0], one["hands"][1], two["hands"][1]],
            "faces": one["faces"] + two["faces"]}
    pose = Pose.from_dict(both)
    assert pose.num_people == 2
    alignment = compute_alignment(Pose.from_dict(standing_pose()), pose, 1.0, 1.0)
    aligned = align_pose(pose, alignment, all_people=True)
    assert pose.hand_rows(1) == [1, 3]
    # each hand moves with its own wrist (the synthetic hands start exactly at the wrists):
    # person 1's left hand is row 1 (wrist 7), its right hand row 3 (wrist 4)
    np.testing.assert_allclose(aligned.hands[1][0], aligned.candidate[18 + 7], atol=1e-9)
    np.testing.assert_allclose(aligned.hands[3][0], aligned.candidate[18 + 4], atol=1e-9)
    np.testing.assert_allclose(aligned.hands[2][0], aligned.candidate[4], atol=1e-9)
    # the second person is re-shaped too: its shoulder width now matches the reference's
    width = np.linalg.norm(aligned.candidate[18 + 2] - aligned.candidate[18 + 5])
    assert width == pytest.approx(0.16, abs=1e-6)
    necks = [aligned.candidate[1], aligned.candidate[19]]
    only_first = draw_pose(aligned, 200, 200)
    everyone = draw_pose(aligned, 200, 200, all_people=True)
    (x1, y1), (x2, y2) = [(int(n[0] * 200), int(n[1] * 200)) for n in necks]
    assert only_first[y1, x1].any() and everyone[y1, x1].any()
    assert not only_first[y2, x2].any() and everyone[y2, x2].any()
