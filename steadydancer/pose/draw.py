"""Drawing poses the way the official pose stage does, pixel for pixel (OpenCV primitives).

Body limbs are filled ellipses (half-axis 4 px) in the OpenPose palette, the limb layer is
dimmed to 60 %, joints are filled circles of radius 4; hands are 2 px lines coloured by an HSV
ramp with red joints; faces are not drawn by default. The palette is applied in OpenCV's BGR
channel order and the canvas is then read as RGB, as the official script does before writing
its videos, so :func:`draw_pose` returns exactly the RGB frames of the official ``single.mp4``
before encoding.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .keypoints import Pose

# OpenPose-18 limbs as 1-based joint pairs; the official drawing uses only the first 17
# (the two ear-to-shoulder limbs are left out).
LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10],
         [10, 11], [2, 12], [12, 13], [13, 14], [2, 1], [1, 15], [15, 17],
         [1, 16], [16, 18], [3, 17], [6, 18]]
NUM_DRAWN_LIMBS = 17
PALETTE = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
           [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
           [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
LIMB_HALF_WIDTH = 4
JOINT_RADIUS = 4
LIMB_DIM = 0.6
HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10],
              [10, 11], [11, 12], [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18],
              [18, 19], [19, 20]]
HAND_LINE_WIDTH = 2
HAND_JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
FACE_RADIUS = 3
FACE_COLOR = (255, 255, 255)
# a hand or face point counts as present when its pixel coordinates exceed this
VISIBLE_EPS = 0.01
# coordinates beyond this many pixels are not drawn (OpenCV rejects them; only
# degenerate alignments produce them, where the official script would crash)
_MAX_PIXEL = 1 << 28


def hsv_ramp_color(index: int, count: int) -> tuple[float, float, float]:
    """Colour (0-255 floats) of hand edge ``index`` of ``count``: HSV hue ramp, full s and v.

    Same float arithmetic as matplotlib's ``hsv_to_rgb`` with s = v = 1, so that OpenCV rounds
    the very same numbers.
    """
    hue = index / float(count)
    sector = int(hue * 6.0)
    frac = hue * 6.0 - sector
    v, p = 1.0, 0.0
    q = 1.0 * (1.0 - 1.0 * frac)
    t = 1.0 * (1.0 - 1.0 * (1.0 - frac))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][sector % 6]
    return tuple(c * 255 for c in rgb)


def _ok(*values: float) -> bool:
    return all(math.isfinite(v) and abs(v) < _MAX_PIXEL for v in values)


def draw_body(canvas: np.ndarray, candidate: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """Limbs (dimmed) and joints of every person in ``subset`` on a uint8 canvas [H, W, 3]."""
    height, width = canvas.shape[:2]
    for limb in range(NUM_DRAWN_LIMBS):
        pair = np.array(LIMBS[limb]) - 1
        for person in subset:
            index = person[pair]
            if -1 in index:
                continue
            xs = candidate[index.astype(int), 0] * float(width)
            ys = candidate[index.astype(int), 1] * float(height)
            mean_x, mean_y = np.mean(xs), np.mean(ys)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            if not _ok(mean_x, mean_y, length, angle):
                continue
            polygon = cv2.ellipse2Poly((int(mean_x), int(mean_y)), (int(length / 2), LIMB_HALF_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, PALETTE[limb])
    canvas = (canvas * LIMB_DIM).astype(np.uint8)
    for joint in range(len(PALETTE)):
        for person in subset:
            index = int(person[joint])
            if index == -1:
                continue
            x, y = candidate[index][0:2]
            if not _ok(x * width, y * height):
                continue
            cv2.circle(canvas, (int(x * width), int(y * height)), JOINT_RADIUS, PALETTE[joint], thickness=-1)
    return canvas


def draw_hands(canvas: np.ndarray, hands: np.ndarray) -> np.ndarray:
    """Hand skeletons [N, 21, 2] (normalised) on the canvas, in place."""
    height, width = canvas.shape[:2]
    for peaks in np.asarray(hands):
        for edge_index, (a, b) in enumerate(HAND_EDGES):
            x1, y1 = peaks[a]
            x2, y2 = peaks[b]
            if not _ok(x1 * width, y1 * height, x2 * width, y2 * height):
                continue
            x1, y1, x2, y2 = int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height)
            if x1 > VISIBLE_EPS and y1 > VISIBLE_EPS and x2 > VISIBLE_EPS and y2 > VISIBLE_EPS:
                cv2.line(canvas, (x1, y1), (x2, y2), hsv_ramp_color(edge_index, len(HAND_EDGES)),
                         thickness=HAND_LINE_WIDTH)
        for x, y in peaks:
            if not _ok(x * width, y * height):
                continue
            x, y = int(x * width), int(y * height)
            if x > VISIBLE_EPS and y > VISIBLE_EPS:
                cv2.circle(canvas, (x, y), HAND_JOINT_RADIUS, HAND_JOINT_COLOR, thickness=-1)
    return canvas


def draw_faces(canvas: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Face landmarks [N, 68, 2] (normalised) as white dots, in place."""
    height, width = canvas.shape[:2]
    for landmarks in np.asarray(faces):
        for x, y in landmarks:
            if not _ok(x * width, y * height):
                continue
            x, y = int(x * width), int(y * height)
            if x > VISIBLE_EPS and y > VISIBLE_EPS:
                cv2.circle(canvas, (x, y), FACE_RADIUS, FACE_COLOR, thickness=-1)
    return canvas


def draw_pose(pose: Pose, height: int, width: int, draw_face: bool = False,
              all_people: bool = False) -> np.ndarray:
    """RGB uint8 frame [height, width, 3] of the pose on black, as the official frames.

    Only the most prominent person (first body, first two hands, first face) is drawn, as in
    the official code, unless ``all_people``.
    """
    people = pose.num_people if all_people else 1
    candidate = pose.candidate[:18 * people]
    subset = pose.subset[:people]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas = draw_body(canvas, candidate, subset)
    canvas = draw_hands(canvas, pose.hands[:2 * people])
    if draw_face:
        canvas = draw_faces(canvas, pose.faces[:people])
    return np.ascontiguousarray(canvas[:, :, ::-1])
