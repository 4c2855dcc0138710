"""Poses in memory and the ``keypoints.json`` file (format ``steadydancer-pose-v1``, docs/pose.md).

A pose uses the DWPose/ControlNet layout: for ``P`` people, ``candidate`` [18*P, 2] holds the
OpenPose-18 body points of person ``p`` in rows ``18p..18p+17``, ``subset`` [P, 18] holds, per
person and joint, the row of ``candidate`` to use (-1 = missing), ``hands`` [2*P, 21, 2] holds
the left hands of all people, then their right hands (person ``p``: rows ``p`` and ``P+p``), and ``faces`` [P, 68, 2] the face landmarks.
Coordinates are (x, y) normalised by the width and height of the image the detector saw;
a missing point is (-1, -1). The most prominent person comes first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path

FORMAT = "steadydancer-pose-v1"
NUM_BODY = 18
NUM_HAND = 21
NUM_FACE = 68


@dataclass
class Pose:
    """One frame's people; arrays are float64 (see the module docstring for shapes)."""

    candidate: np.ndarray
    subset: np.ndarray
    hands: np.ndarray
    faces: np.ndarray
    scores: dict[str, Any] | None = None

    @property
    def num_people(self) -> int:
        return int(self.subset.shape[0])

    def hand_rows(self, person: int) -> list[int]:
        """Rows of ``hands`` holding ``person``'s left and right hand (DWPose order)."""
        return [person, self.num_people + person]

    def copy(self) -> "Pose":
        return Pose(self.candidate.copy(), self.subset.copy(), self.hands.copy(),
                    self.faces.copy(), None if self.scores is None else json.loads(json.dumps(self.scores)))

    def has_person(self) -> bool:
        """True when at least one body joint of someone was found."""
        return bool(self.subset.size) and bool((self.subset >= 0).any())

    def neck(self) -> tuple[float, float] | None:
        """Normalised (x, y) of the first person's neck (joint 1), None when missing."""
        if not self.subset.size or self.subset[0, 1] < 0:
            return None
        x, y = self.candidate[int(self.subset[0, 1])]
        return float(x), float(y)

    @classmethod
    def empty(cls) -> "Pose":
        """Nobody found: one person whose every point is missing."""
        return cls(np.full((NUM_BODY, 2), -1.0), np.full((1, NUM_BODY), -1.0),
                   np.full((2, NUM_HAND, 2), -1.0), np.full((1, NUM_FACE, 2), -1.0))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "pose") -> "Pose":
        """Build from the JSON/DWPose dict layout; an empty detection becomes :meth:`empty`."""
        try:
            bodies = data["bodies"]
            candidate = np.asarray(bodies["candidate"], dtype=np.float64)
            subset = np.asarray(bodies["subset"], dtype=np.float64)
            hands = np.asarray(data.get("hands", []), dtype=np.float64)
            faces = np.asarray(data.get("faces", []), dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: not a pose (expected bodies.candidate, bodies.subset, "
                             f"hands, faces): {exc}") from None
        if subset.size == 0 or candidate.size == 0:
            empty = cls.empty()
            empty.scores = data.get("scores")
            return empty
        candidate = candidate.reshape(-1, 2)
        subset = subset.reshape(-1, NUM_BODY)
        people = subset.shape[0]
        hands = hands.reshape(-1, NUM_HAND, 2) if hands.size else np.full((2 * people, NUM_HAND, 2), -1.0)
        faces = faces.reshape(-1, NUM_FACE, 2) if faces.size else np.full((people, NUM_FACE, 2), -1.0)
        if candidate.shape[0] < NUM_BODY * people or hands.shape[0] < 2 * people or faces.shape[0] < people:
            raise InputError(f"{where}: {people} people need {NUM_BODY * people} body points, "
                             f"{2 * people} hands and {people} faces; got {candidate.shape[0]}, "
                             f"{hands.shape[0]} and {faces.shape[0]}")
        if subset.max() >= candidate.shape[0]:
            raise InputError(f"{where}: bodies.subset points past the end of bodies.candidate")
        return cls(candidate, subset, hands, faces, data.get("scores"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout (plain lists; subset as integers)."""
        out: dict[str, Any] = {
            "bodies": {"candidate": _round_list(self.candidate),
                       "subset": self.subset.astype(int).tolist()},
            "hands": _round_list(self.hands),
            "faces": _round_list(self.faces),
        }
        if self.scores is not None:
            out["scores"] = self.scores
        return out


def _round_list(array: np.ndarray) -> list:
    # repr of a float64 round-trips exactly through JSON, so no rounding is applied
    return np.asarray(array, dtype=np.float64).tolist()


@dataclass
class KeypointsFile:
    """Contents of ``keypoints.json``: the reference pose and every driving frame's pose.

    ``reference_size`` and ``driving_size`` are (width, height) in pixels of the original
    reference image and driving video; ``frames[i]`` is the pose of video frame ``i`` (of the
    video resampled to ``fps`` when the source record says so). ``source``: what the file was
    made from (files' fingerprints, detector and settings, frames covered; see
    ``steadydancer.pose.prepare``), None for a file written by another tool.
    """

    reference_size: tuple[int, int]
    reference: Pose
    driving_size: tuple[int, int]
    fps: float
    frames: list[Pose] = field(default_factory=list)
    source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT}
        if self.source is not None:
            out["source"] = self.source
        out.update({
            "reference": {"width": int(self.reference_size[0]), "height": int(self.reference_size[1]),
                          "pose": self.reference.to_dict()},
            "driving": {"width": int(self.driving_size[0]), "height": int(self.driving_size[1]),
                        "fps": float(self.fps), "frames": [pose.to_dict() for pose in self.frames]},
        })
        return out


def save_keypoints(path: str | os.PathLike, keypoints: KeypointsFile) -> None:
    """Write ``keypoints.json`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(keypoints.to_dict(), separators=(",", ":")))


def load_keypoints(path: str | os.PathLike) -> KeypointsFile:
    """Read and check a ``keypoints.json``; any problem is an :class:`InputError` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read keypoints file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: expected a keypoints file with \"format\": \"{FORMAT}\"")
    try:
        ref, drv = data["reference"], data["driving"]
        reference_size = (int(ref["width"]), int(ref["height"]))
        driving_size = (int(drv["width"]), int(drv["height"]))
        fps = float(drv["fps"])
        frames_data = drv["frames"]
        ref_pose = ref["pose"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: missing or bad field {exc} (see docs/pose.md, keypoints file)") from None
    if min(reference_size + driving_size) <= 0 or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{path}: sizes and fps must be positive")
    frames = [Pose.from_dict(f, f"{path}: driving frame {i}") for i, f in enumerate(frames_data)]
    source = data.get("source")
    return KeypointsFile(reference_size, Pose.from_dict(ref_pose, f"{path}: reference"),
                         driving_size, fps, frames, source if isinstance(source, dict) else None)
