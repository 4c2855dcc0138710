"""Aligning driving poses to the reference person, as the official ``pose_align.py`` does.

Limb-wise scales (neck, both sides of the face, shoulders, upper/lower arms, hands, torso,
upper/lower legs) are measured once, between the reference pose and the driving frame
``align_frame``; every driving frame is then re-built limb by limb outward from the neck with
those scales, shifted so that the driving neck of ``align_frame`` lands on the reference neck,
and put back into the reference image's normalised coordinates. Points missing in a frame stay
missing (their subset entry is -1). All arithmetic follows the official order of operations
(OpenCV's rotation matrix included) so that the same keypoints give the same drawings.

Coordinates inside this module are "height units": y in [0, 1], x in [0, W/H].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .keypoints import Pose

# The reference image is resized to this pixel area (multiples of 16) before detection.
REFERENCE_AREA = 1024 * 576


def reference_size(height: int, width: int, area: int = REFERENCE_AREA) -> tuple[int, int]:
    """(height, width) the reference image is resized to: ~``area`` pixels, multiples of 16."""
    aspect = height / width
    new_h = round(np.sqrt(area * aspect) // 16) * 16
    new_w = round(np.sqrt(area / aspect) // 16) * 16
    return int(new_h), int(new_w)


SCALE_NAMES = ("neck", "face_left", "face_right", "shoulder", "arm_upper", "arm_lower", "hand",
               "body_len", "leg_upper", "leg_lower")


@dataclass
class Alignment:
    """Limb scales (reference length / driving length) and the neck offset (height units)."""

    scales: dict[str, float]
    offset: np.ndarray  # [2]
    video_ratio: float  # driving width / height
    ref_ratio: float  # resized reference width / height


def _dist(a: np.ndarray, b: np.ndarray) -> np.float64:
    return np.linalg.norm(a - b)


def _to_height_units(pose: Pose, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    body = pose.candidate[:18].copy()
    hands = pose.hands[:2].copy()
    body[:, 0] = body[:, 0] * ratio
    hands[:, :, 0] = hands[:, :, 0] * ratio
    return body, hands


def compute_alignment(reference: Pose, driving: Pose, ref_ratio: float, video_ratio: float) -> Alignment:
    """Scales and offset from the first person of ``reference`` and of the align frame.

    ``ref_ratio``: width / height of the resized reference; ``video_ratio``: of the video.
    As in the official code, a missing point takes part with its (-1, -1) placeholder, a
    0/0 scale becomes 1, and the hand scale is the mean of the two arm scales.
    """
    ref, _ = _to_height_units(reference, ref_ratio)
    drv, _ = _to_height_units(driving, video_ratio)
    scales: dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        def ratio(*pairs: tuple[int, int]) -> np.float64:
            return sum(_dist(ref[a], ref[b]) for a, b in pairs) / sum(_dist(drv[a], drv[b]) for a, b in pairs)

        scales["neck"] = ratio((0, 1))
        scales["face_left"] = ratio((16, 14), (14, 0))
        scales["face_right"] = ratio((17, 15), (15, 0))
        scales["shoulder"] = ratio((2, 5))
        scales["arm_upper"] = (ratio((2, 3)) + ratio((5, 6))) / 2
        scales["arm_lower"] = (ratio((3, 4)) + ratio((6, 7))) / 2
        # the official hand-length term is switched off (zero iterations), leaving the arms' mean
        scales["hand"] = (scales["arm_upper"] + scales["arm_lower"]) / 2
        scales["body_len"] = (_dist(ref[1], (ref[8] + ref[11]) / 2) / _dist(drv[1], (drv[8] + drv[11]) / 2))
        scales["leg_upper"] = (ratio((8, 9)) + ratio((11, 12))) / 2
        scales["leg_lower"] = (ratio((9, 10)) + ratio((12, 13))) / 2
    scales = {k: (1.0 if np.isnan(v) else float(v)) for k, v in scales.items()}
    return Alignment(scales, ref[1] - drv[1], float(video_ratio), float(ref_ratio))


def _scale_about(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    # OpenCV's rotation matrix with angle 0: the official transform, rounding included
    # (an infinite scale gives NaN here, which later becomes a -1 placeholder, as there)
    matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), 0, scale)
    return np.dot(points, matrix[:, :2].T) + matrix[:, 2]


def _align_person(body_in: np.ndarray, hands_in: np.ndarray, faces_in: np.ndarray,
                  s: dict[str, float], video_ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One person's body [18,2], hands [2,21,2], faces [F,68,2] (normalised) -> aligned, height units."""
    body = body_in.copy()
    hands = hands_in.copy()
    faces = faces_in.copy()
    body[:, 0] = body[:, 0] * video_ratio
    hands[:, :, 0] = hands[:, :, 0] * video_ratio
    faces[:, :, 0] = faces[:, :, 0] * video_ratio

    # offsets of each part from its parent, taken before anything moves
    rel = {
        "face_left": body[[14, 16]] - body[[0]], "face_right": body[[15, 17]] - body[[0]],
        3: body[[3]] - body[[2]], 4: body[[4]] - body[[3]], 6: body[[6]] - body[[5]],
        7: body[[7]] - body[[6]], 9: body[[9]] - body[[8]], 10: body[[10]] - body[[9]],
        12: body[[12]] - body[[11]], 13: body[[13]] - body[[12]],
        "hand_on_4": hands[1] - body[[4]], "hand_on_7": hands[0] - body[[7]],
    }
    body[[0]] = _scale_about(body[[0]], body[1], s["neck"])
    body[[14, 16]] = _scale_about(rel["face_left"] + body[[0]], body[0], s["face_left"])
    body[[15, 17]] = _scale_about(rel["face_right"] + body[[0]], body[0], s["face_right"])
    body[[2, 5]] = _scale_about(body[[2, 5]], body[1], s["shoulder"])
    # right arm chain (OpenPose 2-3-4), then left (5-6-7); each joint scaled about its parent
    body[[3]] = _scale_about(rel[3] + body[[2]], body[2], s["arm_upper"])
    body[[4]] = _scale_about(rel[4] + body[[3]], body[3], s["arm_lower"])
    hands[1] = _scale_about(rel["hand_on_4"] + body[[4]], body[4], s["hand"])
    body[[6]] = _scale_about(rel[6] + body[[5]], body[5], s["arm_upper"])
    body[[7]] = _scale_about(rel[7] + body[[6]], body[6], s["arm_lower"])
    hands[0] = _scale_about(rel["hand_on_7"] + body[[7]], body[7], s["hand"])
    body[[8, 11]] = _scale_about(body[[8, 11]], body[1], s["body_len"])
    body[[9]] = _scale_about(rel[9] + body[[8]], body[8], s["leg_upper"])
    body[[10]] = _scale_about(rel[10] + body[[9]], body[9], s["leg_lower"])
    body[[12]] = _scale_about(rel[12] + body[[11]], body[11], s["leg_upper"])
    body[[13]] = _scale_about(rel[13] + body[[12]], body[12], s["leg_lower"])

    # points that were missing stay at the -1 placeholder; NaN from degenerate scales too
    body[body_in == -1.0] = -1.0
    hands[hands_in == -1.0] = -1.0
    faces[faces_in == -1.0] = -1.0
    return (np.nan_to_num(body, nan=-1.0), np.nan_to_num(hands, nan=-1.0),
            np.nan_to_num(faces, nan=-1.0))


def align_pose(pose: Pose, alignment: Alignment, all_people: bool = False) -> Pose:
    """The driving ``pose`` re-shaped to the reference person, in reference-normalised coordinates.

    Like the official code, only the first person is re-shaped, together with the first two rows
    of ``hands`` (with several people in DWPose order those are two left hands: the official
    quirk, kept so that the same file gives the same drawing); with ``all_people`` every person
    is re-shaped with their own two hands. The neck offset is added to every point, placeholders
    included (their subset entries stay -1), as the official code does.
    """
    candidate = pose.candidate.copy()
    hands = pose.hands.copy()
    faces = pose.faces.copy()
    for person in range(pose.num_people if all_people else min(pose.num_people, 1)):
        rows = slice(18 * person, 18 * person + 18)
        hand_rows = pose.hand_rows(person) if all_people else [0, 1]
        face_rows = slice(person, person + 1)
        if candidate[rows].shape[0] < 18 or max(hand_rows) >= hands.shape[0]:
            continue
        body_a, hands_a, faces_a = _align_person(pose.candidate[rows], pose.hands[hand_rows],
                                                 pose.faces[face_rows], alignment.scales,
                                                 alignment.video_ratio)
        candidate[rows], hands[hand_rows], faces[face_rows] = body_a, hands_a, faces_a
    candidate = candidate + alignment.offset
    hands = hands + alignment.offset
    faces = faces + alignment.offset
    # back from height units to the reference image's normalised x
    candidate[:, 0] = candidate[:, 0] / alignment.ref_ratio
    hands[:, :, 0] = hands[:, :, 0] / alignment.ref_ratio
    faces[:, :, 0] = faces[:, :, 0] / alignment.ref_ratio
    return Pose(candidate, pose.subset.copy(), hands, faces)
