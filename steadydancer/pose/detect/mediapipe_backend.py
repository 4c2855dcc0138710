"""MediaPipe Holistic backend: works offline with the models bundled in the mediapipe wheel.

Uses the legacy ``mediapipe.solutions.holistic`` graph (pose, both hands and the face mesh of
one person) with ``model_complexity=1``: the full pose model is the one shipped inside the
wheel (the heavy one, complexity 2, would be downloaded at run time, which we never do).
Holistic finds one person per image, so N is 0 or 1.

Scores: body points take MediaPipe's per-landmark visibility; hands and face have no per-point
confidence in MediaPipe, so their points score 1.0 when the hand or face was found. Any point
outside the image scores 0 (DWPose gives such points low scores too).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from steadydancer.errors import InputError

from .base import Detector
from .layout import NUM_COCO_WHOLEBODY, coco_wholebody_to_openpose

# COCO-WholeBody body+feet index -> MediaPipe Pose landmark index (None: no counterpart).
# MediaPipe pose: 0 nose, 2/5 left/right eye, 7/8 ears, 11/12 shoulders, 13/14 elbows,
# 15/16 wrists, 23/24 hips, 25/26 knees, 27/28 ankles, 29/30 heels, 31/32 foot index (big toe).
_COCO_BODY_FROM_MEDIAPIPE: list[int | None] = [
    0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28,  # 17 body points
    31, None, 29, 32, None, 30,  # feet: L big toe, L small toe, L heel, R big toe, R small toe, R heel
]

# 68-point face (iBUG-300W / dlib order, as used by DWPose) -> MediaPipe 468-point face mesh
# index. Picked from the mesh's canonical topology so that each entry lies on the same
# anatomical spot: jaw line from the person's right ear to the left (0-16), right brow (17-21),
# left brow (22-26), nose bridge top to tip (27-30), nostril base right to left (31-35),
# right eye from the outer corner clockwise (36-41), left eye from the inner corner (42-47),
# outer lips from the right corner (48-59), inner lips from the right corner (60-67).
FACE68_FROM_MESH468: tuple[int, ...] = (
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107,
    336, 296, 334, 293, 300,
    168, 197, 5, 4,
    98, 97, 2, 326, 327,
    33, 160, 158, 133, 153, 144,
    362, 385, 387, 263, 373, 380,
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    78, 81, 13, 311, 308, 402, 14, 178,
)
assert len(FACE68_FROM_MESH468) == 68

_FACE_OFFSET, _LEFT_HAND_OFFSET, _RIGHT_HAND_OFFSET = 23, 91, 112


def _landmarks_array(landmark_list, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe NormalizedLandmarkList -> (pixels [K, 2], visibility [K])."""
    points = np.array([(lm.x * width, lm.y * height) for lm in landmark_list.landmark], dtype=np.float64)
    visibility = np.array([lm.visibility for lm in landmark_list.landmark], dtype=np.float64)
    return points, visibility


class MediaPipeWholebody(Detector):
    """One-person whole-body detector on MediaPipe Holistic (CPU, bundled models)."""

    name = "mediapipe"

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        # MediaPipe's C++ side logs every graph start to stderr; keep warnings and errors only.
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            from mediapipe.python.solutions import holistic
        except ImportError as exc:
            raise InputError(
                "the mediapipe pose backend needs mediapipe==0.10.14 (pip install 'mediapipe==0.10.14'), "
                "or give DWPose ONNX weights (--dwpose_ckpt, --yolox_ckpt)"
            ) from exc
        self._holistic = holistic.Holistic(
            static_image_mode=True,
            model_complexity=1,
            smooth_landmarks=False,
            refine_face_landmarks=False,
            min_detection_confidence=min_detection_confidence,
        )
        self._warm_up_quietly()

    def _warm_up_quietly(self) -> None:
        """Start MediaPipe's graph once on a blank image with the process's stderr muted.

        Its TFLite runtime prints a few lines per sub-model as the graph starts (absl logging
        straight to file descriptor 2, before absl is initialised, so no log level reaches them);
        they would land in the middle of the progress bars. Python exceptions still propagate.
        """
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                self.detect(np.zeros((64, 64, 3), np.uint8))
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image_bgr.shape[:2]
        image_rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        with warnings.catch_warnings():
            # mediapipe 0.10.14 calls a protobuf API that protobuf 4.25 marks deprecated.
            warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
            result = self._holistic.process(image_rgb)
        if result.pose_landmarks is None:
            return np.zeros((0, 134, 2)), np.zeros((0, 134))

        keypoints = np.zeros((1, NUM_COCO_WHOLEBODY, 2))
        scores = np.zeros((1, NUM_COCO_WHOLEBODY))
        pose_points, pose_visibility = _landmarks_array(result.pose_landmarks, width, height)
        for coco_index, mp_index in enumerate(_COCO_BODY_FROM_MEDIAPIPE):
            if mp_index is not None:
                keypoints[0, coco_index] = pose_points[mp_index]
                scores[0, coco_index] = pose_visibility[mp_index]
        if result.face_landmarks is not None:
            face_points, _ = _landmarks_array(result.face_landmarks, width, height)
            keypoints[0, _FACE_OFFSET : _FACE_OFFSET + 68] = face_points[list(FACE68_FROM_MESH468)]
            scores[0, _FACE_OFFSET : _FACE_OFFSET + 68] = 1.0
        # Holistic's left/right hands are the person's own, as in COCO-WholeBody; MediaPipe's
        # 21 hand points are in the same order as COCO-WholeBody's.
        for offset, hand in ((_LEFT_HAND_OFFSET, result.left_hand_landmarks), (_RIGHT_HAND_OFFSET, result.right_hand_landmarks)):
            if hand is not None:
                hand_points, _ = _landmarks_array(hand, width, height)
                keypoints[0, offset : offset + 21] = hand_points
                scores[0, offset : offset + 21] = 1.0

        outside = (
            (keypoints[..., 0] < 0) | (keypoints[..., 0] >= width)
            | (keypoints[..., 1] < 0) | (keypoints[..., 1] >= height)
        )
        scores[outside] = 0.0
        return coco_wholebody_to_openpose(keypoints, scores)

    def close(self) -> None:
        if self._holistic is not None:
            self._holistic.close()
            self._holistic = None
