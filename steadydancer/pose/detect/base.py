"""The interface every whole-body detector backend implements."""

from __future__ import annotations

import abc

import numpy as np


class Detector(abc.ABC):
    """A whole-body pose detector.

    ``detect`` takes one BGR uint8 image [H, W, 3] and returns every person found as
    (keypoints [N, 134, 2] float pixels of that image, scores [N, 134] float in [0, 1]) in the
    layout of :mod:`steadydancer.pose.detect.layout`. N may be 0.
    """

    #: short backend name: "mediapipe", "onnx" or "mmpose"
    name: str = ""

    @abc.abstractmethod
    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """People in one BGR image: ([N, 134, 2] pixels, [N, 134] scores)."""

    def close(self) -> None:
        """Free the backend's resources (the detector is unusable afterwards)."""

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
