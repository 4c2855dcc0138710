"""make_detector / detect_pose: one entry point over the three backends."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from steadydancer.errors import InputError

from .base import Detector
from .layout import BODY, FACE, LEFT_HAND, RIGHT_HAND

BACKENDS = ("auto", "mediapipe", "onnx", "mmpose")


def _existing_file(path: str | os.PathLike | None, flag: str, suffix: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag}: {path} is not a file (expected a {suffix} file)")
    if path.suffix.lower() != suffix:
        raise InputError(f"{flag}: {path} should be a {suffix} file")
    return path


def resolve_backend(backend: str = "auto", dwpose_onnx: str | os.PathLike | None = None,
                    yolox_onnx: str | os.PathLike | None = None, dwpose_pth: str | os.PathLike | None = None,
                    yolox_pth: str | os.PathLike | None = None,
                    flag: str = "--backend") -> tuple[str, dict[str, Path | None]]:
    """The backend that :func:`make_detector` would build ("auto" resolved) and the weight files
    it would read (checked to exist), without building anything. ``flag``: the command-line
    name of ``backend``, for the error message."""
    if backend not in BACKENDS:
        raise InputError(f"{flag}: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    weights = {"dwpose_onnx": _existing_file(dwpose_onnx, "--dwpose_ckpt", ".onnx"),
               "yolox_onnx": _existing_file(yolox_onnx, "--yolox_ckpt", ".onnx"),
               "dwpose_pth": _existing_file(dwpose_pth, "--dwpose_ckpt", ".pth"),
               "yolox_pth": _existing_file(yolox_pth, "--yolox_ckpt", ".pth")}
    if backend == "auto":
        if weights["dwpose_onnx"] or weights["yolox_onnx"]:
            backend = "onnx"
        elif weights["dwpose_pth"] or weights["yolox_pth"]:
            backend = "mmpose"
        else:
            backend = "mediapipe"
    return backend, weights


def make_detector(
    backend: str = "auto",
    dwpose_onnx: str | os.PathLike | None = None,
    yolox_onnx: str | os.PathLike | None = None,
    dwpose_pth: str | os.PathLike | None = None,
    yolox_pth: str | os.PathLike | None = None,
    device: str = "cpu",
) -> Detector:
    """Build a whole-body detector.

    backend "auto": DWPose ONNX when both .onnx files are given, mmpose when both .pth files are
    given, else mediapipe (bundled models, no download). "onnx" needs dwpose_onnx + yolox_onnx,
    "mmpose" needs dwpose_pth + yolox_pth and the optional mmpose/mmdet/mmcv packages.
    device: "cpu" or "cuda[:N]" (ONNX: CUDA execution provider when onnxruntime has it).
    """
    backend, weights = resolve_backend(backend, dwpose_onnx, yolox_onnx, dwpose_pth, yolox_pth)
    dwpose_onnx, yolox_onnx = weights["dwpose_onnx"], weights["yolox_onnx"]
    dwpose_pth, yolox_pth = weights["dwpose_pth"], weights["yolox_pth"]
    if backend == "onnx":
        if dwpose_onnx is None or yolox_onnx is None:
            raise InputError(
                "the ONNX pose backend needs both --dwpose_ckpt (dw-ll_ucoco_384.onnx) and "
                "--yolox_ckpt (yolox_l.onnx)"
            )
        from .onnx_backend import OnnxWholebody

        return OnnxWholebody(pose_path=dwpose_onnx, det_path=yolox_onnx, device=device)
    if backend == "mmpose":
        if dwpose_pth is None or yolox_pth is None:
            raise InputError(
                "the mmpose pose backend needs both --dwpose_ckpt (dw-ll_ucoco_384.pth) and "
                "--yolox_ckpt (yolox_l_8x8_300e_coco_*.pth)"
            )
        from .mmpose_backend import MMPoseWholebody

        return MMPoseWholebody(pose_ckpt=dwpose_pth, det_ckpt=yolox_pth, device=device)
    from .mediapipe_backend import MediaPipeWholebody

    return MediaPipeWholebody()


def resize_for_detection(image_bgr: np.ndarray, detect_resolution: int) -> np.ndarray:
    """Resize as the official DWposeDetector does before detection.

    The short side goes to detect_resolution, then each side is rounded to a multiple of 64;
    bicubic when enlarging, area averaging when shrinking (the test is on the short-side factor).
    """
    height, width = image_bgr.shape[:2]
    factor = float(detect_resolution) / min(height, width)
    new_height = int(np.round(height * factor / 64.0)) * 64
    new_width = int(np.round(width * factor / 64.0)) * 64
    interpolation = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    return cv2.resize(image_bgr, (new_width, new_height), interpolation=interpolation)


def empty_pose() -> dict:
    """A valid POSE with no person in it."""
    return {
        "bodies": {"candidate": [], "subset": []},
        "hands": [],
        "faces": [],
        "scores": {"body": [], "hands": [], "faces": []},
    }


def count_people(pose: dict) -> int:
    """Number of people in a POSE dict (0 for an empty one)."""
    return len(pose["bodies"]["subset"])


def prominence(keypoints: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """How prominent each person is: [N] floats, larger first.

    Area of the box around the person's body points (OpenPose-18) that score above threshold,
    times the mean score of those points; 0 for a person with fewer than two such points.
    Inputs: keypoints [N, 134, 2] (any consistent unit), scores [N, 134].
    """
    result = np.zeros(len(keypoints))
    for person, (points, point_scores) in enumerate(zip(keypoints[:, BODY], scores[:, BODY])):
        visible = point_scores > threshold
        if visible.sum() < 2:
            continue
        extent = points[visible].max(axis=0) - points[visible].min(axis=0)
        result[person] = float(extent[0] * extent[1]) * float(point_scores[visible].mean())
    return result


def _points_with_missing(points: np.ndarray, point_scores: np.ndarray, threshold: float) -> list:
    out = points.copy()
    out[point_scores <= threshold] = -1.0
    return out.tolist()


def build_pose(
    keypoints: np.ndarray,
    scores: np.ndarray,
    width: int,
    height: int,
    threshold: float = 0.35,
    all_people: bool = False,
) -> dict:
    """The POSE dict of keypoints.json from detector output.

    keypoints [N, 134, 2] in pixels of a width x height image, scores [N, 134].
    Coordinates are divided by (width, height). People are ordered by :func:`prominence`
    (ties keep the detector's order); only the first is kept unless all_people.
    A point scoring <= threshold is missing: -1 in ``subset`` for body points and -1, -1 for
    hand and face points. As in the official DWPose code, ``candidate`` keeps the body points'
    coordinates even when they are missing (``subset`` says which are), so that alignment sees
    the very numbers the official pipeline sees.
    Layout for N people: candidate [18 N, 2]; subset [N, 18] holding 18 i + j or -1; hands
    [2 N, 21, 2] as DWPose orders them (the left hands of persons 0..N-1, then their right
    hands); faces [N, 68, 2];
    scores: body [18 N] (flat, like candidate; [18] for one person, see docs/pose.md),
    hands [2 N, 21], faces [N, 68].
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 134, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 134)
    if len(keypoints) == 0:
        return empty_pose()
    order = np.argsort(-prominence(keypoints, scores, threshold), kind="stable")
    if not all_people:
        order = order[:1]
    keypoints = keypoints[order] / np.array([float(width), float(height)])
    scores = scores[order]

    candidate, subset, faces = [], [], []
    body_scores, face_scores = [], []
    # DWPose order: the left hands of all people, then their right hands
    left_hands, right_hands, left_scores, right_scores = [], [], [], []
    for person, (points, point_scores) in enumerate(zip(keypoints, scores)):
        candidate.extend(points[BODY].tolist())
        subset.append(
            [float(18 * person + j) if s > threshold else -1.0 for j, s in enumerate(point_scores[BODY])]
        )
        for hand, hands, hand_scores in ((LEFT_HAND, left_hands, left_scores),
                                         (RIGHT_HAND, right_hands, right_scores)):
            hands.append(_points_with_missing(points[hand], point_scores[hand], threshold))
            hand_scores.append(point_scores[hand].tolist())
        faces.append(_points_with_missing(points[FACE], point_scores[FACE], threshold))
        body_scores.extend(point_scores[BODY].tolist())
        face_scores.append(point_scores[FACE].tolist())
    return {
        "bodies": {"candidate": candidate, "subset": subset},
        "hands": left_hands + right_hands,
        "faces": faces,
        "scores": {"body": body_scores, "hands": left_scores + right_scores, "faces": face_scores},
    }


def detect_pose(
    detector: Detector,
    image_rgb: np.ndarray,
    detect_resolution: int = 1024,
    threshold: float = 0.35,
    all_people: bool = False,
) -> dict:
    """Detect the whole-body pose in one RGB uint8 image [H, W, 3].

    The image is converted to BGR and resized as the official DWposeDetector does
    (:func:`resize_for_detection`), then detected; coordinates are normalised by the size of
    that resized image. Returns one POSE dict (see :func:`build_pose`); an empty POSE
    (:func:`count_people` == 0) when nobody is found.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] not in (3, 4):
        raise InputError(
            f"pose detection expects an RGB uint8 image [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}"
        )
    if image_rgb.shape[2] == 4:
        # Composite on white, as the official HWC3 helper does for RGBA input.
        alpha = image_rgb[:, :, 3:4].astype(np.float32) / 255.0
        blended = image_rgb[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image_rgb = blended.clip(0, 255).astype(np.uint8)
    image_bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    resized = resize_for_detection(image_bgr, detect_resolution)
    height, width = resized.shape[:2]
    keypoints, scores = detector.detect(resized)
    return build_pose(keypoints, scores, width, height, threshold=threshold, all_people=all_people)
