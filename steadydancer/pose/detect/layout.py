"""Keypoint layouts shared by every backend.

Every backend returns people in one array layout, the one the DWPose whole-body pipeline
produces after it adds the neck: 134 points per person, pixel coordinates of the image the
detector saw, with one confidence score per point.

    0..17    OpenPose-18 body (nose, neck, R shoulder/elbow/wrist, L shoulder/elbow/wrist,
             R hip/knee/ankle, L hip/knee/ankle, R eye, L eye, R ear, L ear)
    18..23   feet (COCO-WholeBody order: L big toe, L small toe, L heel, R ..., R ..., R ...)
    24..91   68 face points (iBUG-68 / dlib order)
    92..112  21 points of the person's left hand
    113..133 21 points of the person's right hand

The hand order (left, right) is the person's own left and right, as in COCO-WholeBody.
"""

from __future__ import annotations

import numpy as np

NUM_COCO_WHOLEBODY = 133
NUM_POINTS = 134
BODY = slice(0, 18)
FEET = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)

# COCO-WholeBody body indices of the shoulders (left, right).
_COCO_LEFT_SHOULDER, _COCO_RIGHT_SHOULDER = 5, 6
# A neck is only trusted when both shoulders score above this (the DWPose rule).
NECK_SHOULDER_MIN_SCORE = 0.3

# After the neck is inserted at index 17 of the 133 COCO-WholeBody points, entry i of the
# OpenPose-ordered layout is taken from this index (body reordered, the rest unchanged).
_OPENPOSE_FROM_COCO_WITH_NECK = np.array(
    [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3] + list(range(18, NUM_POINTS))
)


def coco_wholebody_to_openpose(
    keypoints: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """COCO-WholeBody people to the 134-point OpenPose-ordered layout.

    keypoints: [N, 133, 2] pixels; scores: [N, 133].
    Returns ([N, 134, 2], [N, 134]). The neck is the mean of the two shoulders; its score is
    1.0 when both shoulders score above 0.3 and 0.0 otherwise (so it follows the shoulders at
    any later threshold below 1).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_COCO_WHOLEBODY, 2):
        raise ValueError(f"expected keypoints [N, 133, 2], got {keypoints.shape}")
    shoulders = [_COCO_LEFT_SHOULDER, _COCO_RIGHT_SHOULDER]
    neck_xy = keypoints[:, shoulders].mean(axis=1)
    neck_score = np.all(scores[:, shoulders] > NECK_SHOULDER_MIN_SCORE, axis=1).astype(np.float64)
    with_neck_xy = np.insert(keypoints, 17, neck_xy, axis=1)
    with_neck_score = np.insert(scores, 17, neck_score, axis=1)
    return (
        with_neck_xy[:, _OPENPOSE_FROM_COCO_WITH_NECK],
        with_neck_score[:, _OPENPOSE_FROM_COCO_WITH_NECK],
    )
