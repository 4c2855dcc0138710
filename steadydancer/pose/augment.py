"""The negative pose stream: each aligned frame re-shaped at random around its neck.

As in the official ``utils_aug.pose_aug_diff``: per frame, x is stretched by a random aspect
factor and both axes by a random scale (about the origin), then the pose is shifted back so
that its neck (body point 1) does not move. The official draws from Python's global
``random``; here a ``numpy.random.Generator`` makes the stream reproducible from a seed.
"""

from __future__ import annotations

import numpy as np

from .keypoints import Pose

ASPECT_RANGE = (0.6, 1.4)
SCALE_RANGE = (0.7, 1.3)
# drawn but unused by the official augmentation (its translation is commented out); we draw
# them too so that the per-frame draw order is the official one
OFFSET_RANGE = ((-0.2, 0.2), (-0.2, 0.2))


def augment_pose(pose: Pose, rng: np.random.Generator,
                 scale_range: tuple[float, float] = SCALE_RANGE,
                 aspect_range: tuple[float, float] = ASPECT_RANGE) -> tuple[Pose, dict[str, float]]:
    """A randomly re-shaped copy of an aligned pose, and the factors used (``scale``, ``aspect``).

    Coordinates are normalised to the reference image; the neck (``candidate[1]``) is kept.
    """
    rng.uniform(*OFFSET_RANGE[0])
    rng.uniform(*OFFSET_RANGE[1])
    scale = float(rng.uniform(*scale_range))
    aspect = float(rng.uniform(*aspect_range))
    candidate = pose.candidate.copy()
    hands = pose.hands.copy()
    faces = pose.faces.copy()
    candidate[:, 0] = candidate[:, 0] * aspect
    hands[:, :, 0] = hands[:, :, 0] * aspect
    hands *= scale
    candidate *= scale
    shift = pose.candidate[1] - candidate[1]
    candidate += shift[np.newaxis, :]
    faces += shift[np.newaxis, np.newaxis, :]
    hands += shift[np.newaxis, np.newaxis, :]
    return Pose(candidate, pose.subset.copy(), hands, faces), {"scale": scale, "aspect": aspect}


def augment_sequence(poses: list[Pose], seed: int | None = 0) -> tuple[list[Pose], list[dict[str, float]]]:
    """Augment every frame with one generator seeded by ``seed``; same seed, same stream."""
    rng = np.random.default_rng(seed)
    out, factors = [], []
    for pose in poses:
        augmented, used = augment_pose(pose, rng)
        out.append(augmented)
        factors.append(used)
    return out, factors


# -- the same re-shaping on drawn frames (when only pose images are at hand, no keypoints) ---------

# the neck joint (body point 1) is a filled circle of draw.PALETTE[1] in BGR order, so in the
# RGB frames draw_pose returns (and the JPEGs prepare writes) it is this colour
NECK_RGB = (0, 85, 255)
_NECK_TOLERANCE = 40  # per channel: survives JPEG and the bicubic resize of the drawn frames


def find_neck(frame: np.ndarray) -> tuple[float, float] | None:
    """(x, y) pixel position of the neck joint in a drawn pose frame (RGB uint8 [H, W, 3]).

    The largest blob of the neck joint's colour (hand lines of a similar hue are thinner); when
    there is none, the centroid of the drawn (non-black) pixels; None for an empty frame.
    """
    import cv2

    close = np.all(np.abs(frame.astype(np.int16) - np.array(NECK_RGB, np.int16)) <= _NECK_TOLERANCE, axis=-1)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(close.astype(np.uint8), connectivity=8)
    if count > 1:
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        return float(centroids[best][0]), float(centroids[best][1])
    ys, xs = np.nonzero(frame.max(axis=-1) > 40)
    if len(xs) == 0:
        return None
    return float(xs.mean()), float(ys.mean())


def augment_frames(frames: list[np.ndarray], seed: int | None = 0) -> list[np.ndarray]:
    """The negative stream from drawn positive frames (RGB uint8 [H, W, 3] each).

    Per frame the factors are drawn exactly as :func:`augment_sequence` draws them (same
    generator, same order), and the frame is warped by the same map about its neck
    (x' = aspect * scale * (x - neck_x) + neck_x, y' = scale * (y - neck_y) + neck_y), so each
    joint lands where the official augmentation puts it; unlike a redraw from keypoints, the
    line widths scale too. An empty frame stays as it is. Prefer ``prepare`` (keypoints) when
    the driving video is at hand.
    """
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for frame in frames:
        rng.uniform(*OFFSET_RANGE[0])
        rng.uniform(*OFFSET_RANGE[1])
        scale = float(rng.uniform(*SCALE_RANGE))
        aspect = float(rng.uniform(*ASPECT_RANGE))
        neck = find_neck(frame)
        if neck is None:
            out.append(frame.copy())
            continue
        sx, sy = aspect * scale, scale
        matrix = np.array([[sx, 0.0, neck[0] * (1 - sx)], [0.0, sy, neck[1] * (1 - sy)]], dtype=np.float64)
        height, width = frame.shape[:2]
        out.append(cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)))
    return out
