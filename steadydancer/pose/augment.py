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
