"""Whole-body pose detection (OpenPose-18 body, 2 x 21 hands, 68 face points).

Backends: mediapipe (bundled models, the default when no DWPose weights are given), DWPose as
ONNX on onnxruntime, and the original DWPose/YOLOX .pth files through mmpose (optional).
"""

from .api import (
    BACKENDS,
    build_pose,
    count_people,
    detect_pose,
    empty_pose,
    make_detector,
    prominence,
    resize_for_detection,
    resolve_backend,
)
from .base import Detector

__all__ = [
    "BACKENDS",
    "Detector",
    "build_pose",
    "count_people",
    "detect_pose",
    "empty_pose",
    "make_detector",
    "prominence",
    "resize_for_detection",
    "resolve_backend",
]
