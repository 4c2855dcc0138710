"""Pose parity case: our prepare run against the official ``pose_align.py`` frames.

The case folder holds ``ref_image.png``, ``driving_video.mp4``, ``keypoints.json`` (the poses
the official detector was made to report), ``meta.json`` (``align_frame``) and ``official/NNNN.png``
(the official positive frames before any encoding). We run ``prepare`` on a temporary folder that
already holds the case's ``keypoints.json`` (so no detector runs) and report:

- ``positive_drawn``: ||ours - official|| / ||official|| over all frames, for the frames as we
  draw them before JPEG; 0 when the drawings are pixel-identical.
- ``positive_jpeg``: the same for the ``positive/NNNN.jpg`` files we wrote, against the official
  frames put through the very same JPEG encoder (so JPEG noise cancels; 0 when identical).
- ``frame_count``: |our count - official count| / official count.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from . import relative_error


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return np.ascontiguousarray(image[:, :, ::-1])


def _through_jpeg(rgb: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]


def _stack_error(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    count = min(len(ours), len(ref))
    if count == 0:
        return float("inf")
    for a, b in zip(ours, ref):
        if a.shape != b.shape:
            return float("inf")
    return relative_error(np.stack(ours[:count]).astype(np.float64),
                          np.stack(ref[:count]).astype(np.float64))


def run_case(case_dir: Path) -> dict[str, float]:
    from ..pose.draw import draw_pose
    from ..pose.keypoints import load_keypoints
    from ..pose.prepare import plan_poses, prepare_inputs

    case_dir = Path(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text()) if (case_dir / "meta.json").is_file() else {}
    align_frame = int(meta.get("align_frame", 0))
    max_frame = meta.get("max_frame")
    official = [_read_rgb(p) for p in sorted((case_dir / "official").glob("*.png"))]

    with tempfile.TemporaryDirectory(prefix="sd-pose-parity-") as tmp:
        out = Path(tmp) / "inputs"
        out.mkdir()
        shutil.copyfile(case_dir / "keypoints.json", out / "keypoints.json")
        prepare_inputs(case_dir / "ref_image.png", case_dir / "driving_video.mp4", out,
                       prompt="", align_frame=align_frame, max_frame=max_frame, progress=False)
        written = sorted((out / "positive").glob("*.jpg"))
        ours_jpeg = [_read_rgb(p) for p in written]
        plan = plan_poses(load_keypoints(out / "keypoints.json"), align_frame, max_frame)
    drawn = [draw_pose(p, 2 * plan.ref_height, 2 * plan.ref_width) for p in plan.positive]
    return {
        "frame_count": abs(len(ours_jpeg) - len(official)) / max(len(official), 1),
        "positive_drawn": _stack_error(drawn, official),
        "positive_jpeg": _stack_error(ours_jpeg, [_through_jpeg(img) for img in official]),
    }
