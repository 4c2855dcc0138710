"""DWPose on onnxruntime: YOLOX-L person boxes, then the dw-ll_ucoco_384 SimCC whole-body model.

Pre- and post-processing follow the DWPose ONNX pipeline (and mmpose's RTMPose codec):
- YOLOX: letterbox into 640x640 (scale r = min(640/h, 640/w), linear resize to
  (int(w r), int(h r)) at the top-left, pad value 114, float 0..255, no normalisation); decode
  with grid offsets and strides 8/16/32 (xy = (p + grid) * stride, wh = exp(p) * stride);
  score = objectness x class score; person class only, score > 0.1, NMS IoU 0.45 (areas with the
  +1 pixel convention), then keep score > 0.3. Channel order: the official DWposeDetector
  applies COLOR_RGB2BGR to an OpenCV (already BGR) frame, so YOLOX and the pose model see the
  channels swapped relative to their training; both get the same arrays here.
- Pose: box -> center and scale x 1.25, widened to the 288:384 aspect, affine crop 288x384
  (linear), RGB normalised with the ImageNet mean/std in 0..255 units (as mmpose's
  ``bgr_to_rgb=True`` data preprocessor does); SimCC decode: argmax along each axis,
  score = min of the two maxima, location -1 where score <= 0, divided by the split ratio 2.0;
  back-projection: p / (288, 384) * scale + center - scale / 2.
- No box found: the whole image is used as the box, as both official pipelines do.
Unlike mmpose (flip_test=True in the DWPose config), no flip test is run: this matches the
DWPose ONNX pipeline, not the mmpose one, to the last digit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from steadydancer.errors import InputError

from .base import Detector
from .layout import coco_wholebody_to_openpose

YOLOX_INPUT_SIZE = (640, 640)  # (height, width)
YOLOX_STRIDES = (8, 16, 32)
YOLOX_PAD_VALUE = 114
YOLOX_SCORE_THRESHOLD = 0.1
YOLOX_NMS_IOU = 0.45
PERSON_MIN_SCORE = 0.3

POSE_INPUT_SIZE = (288, 384)  # (width, height)
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
# ImageNet mean / std in 0..255 units, RGB order.
POSE_MEAN = np.array([123.675, 116.28, 103.53])
POSE_STD = np.array([58.395, 57.12, 57.375])


# ----------------------------------------------------------------------------- YOLOX

def letterbox(image: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT_SIZE) -> tuple[np.ndarray, float]:
    """Image [H, W, 3] uint8 -> (YOLOX input [3, h_in, w_in] float32, scale factor r)."""
    in_h, in_w = input_size
    ratio = min(in_h / image.shape[0], in_w / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    padded = np.full((in_h, in_w, 3), YOLOX_PAD_VALUE, dtype=np.uint8)
    padded[:new_h, :new_w] = resized
    return np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32), ratio


def yolox_decode(raw: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT_SIZE) -> np.ndarray:
    """Raw YOLOX head output [A, 5 + C] (centre offsets, log sizes, obj, classes) -> [A, 5 + C]
    with (cx, cy, w, h) in input pixels; A = sum over strides of (h_in/s) (w_in/s), row-major."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        rows, cols = input_size[0] // stride, input_size[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xs, ys), axis=2).reshape(-1, 2))
        strides.append(np.full((rows * cols, 1), stride))
    grid = np.concatenate(grids, axis=0)
    stride = np.concatenate(strides, axis=0)
    if raw.shape[0] != len(grid):
        raise InputError(
            f"yolox onnx: output has {raw.shape[0]} anchors, expected {len(grid)} for input {input_size}"
        )
    decoded = raw.astype(np.float64).copy()
    decoded[:, :2] = (raw[:, :2] + grid) * stride
    decoded[:, 2:4] = np.exp(raw[:, 2:4]) * stride
    return decoded


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS over xyxy boxes [N, 4] (areas counted with +1 pixel); indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def person_boxes(raw: np.ndarray, ratio: float, input_size: tuple[int, int] = YOLOX_INPUT_SIZE) -> np.ndarray:
    """Raw YOLOX output [A, 85] -> person boxes [N, 4] xyxy in original-image pixels, best first."""
    decoded = yolox_decode(raw, input_size)
    centre, size = decoded[:, :2], decoded[:, 2:4]
    boxes = np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1) / ratio
    person_scores = decoded[:, 4] * decoded[:, 5]
    # Class-aware NMS: the person class can be processed on its own.
    candidates = person_scores > YOLOX_SCORE_THRESHOLD
    boxes, person_scores = boxes[candidates], person_scores[candidates]
    if len(boxes) == 0:
        return np.zeros((0, 4))
    keep = nms(boxes, person_scores, YOLOX_NMS_IOU)
    boxes, person_scores = boxes[keep], person_scores[keep]
    return boxes[person_scores > PERSON_MIN_SCORE]


# ----------------------------------------------------------------------------- RTMPose / SimCC

def box_to_center_scale(box: np.ndarray, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box [4] -> (center [2], scale [2] = padded (w, h))."""
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    scale = np.array([x2 - x1, y2 - y1]) * padding
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow (w, h) so that w / h == aspect_ratio, never shrinking either side."""
    width, height = scale
    if width > height * aspect_ratio:
        return np.array([width, width / aspect_ratio])
    return np.array([height * aspect_ratio, height])


def crop_warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine taking the box (center, scale (w, h)) onto an output_size (w, h) image, no rotation.

    Built from three point pairs in float32 (centre, a point half a width above it, and one
    half a width to its left) as mmpose does, so the matrix carries the same rounding.
    """
    out_w, out_h = output_size
    half_src, half_dst = scale[0] * 0.5, out_w * 0.5
    src = np.array(
        [center, center + [0.0, -half_src], center + [-half_src, -half_src]], dtype=np.float32
    )
    dst_center = np.array([out_w * 0.5, out_h * 0.5])
    dst = np.array(
        [dst_center, dst_center + [0.0, -half_dst], dst_center + [-half_dst, -half_dst]], dtype=np.float32
    )
    return cv2.getAffineTransform(src, dst)


def crop_person(image_rgb: np.ndarray, box: np.ndarray, input_size: tuple[int, int] = POSE_INPUT_SIZE):
    """Crop one person for the pose model.

    Returns (input [3, h, w] float32 normalised, center [2], scale [2]) where scale is the
    aspect-fixed box size in image pixels that the crop covers.
    """
    center, scale = box_to_center_scale(box)
    scale = fix_aspect_ratio(scale, input_size[0] / input_size[1])
    matrix = crop_warp_matrix(center, scale, input_size)
    crop = cv2.warpAffine(image_rgb, matrix, (int(input_size[0]), int(input_size[1])), flags=cv2.INTER_LINEAR)
    normalised = (crop - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32), center, scale


def simcc_decode(
    simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO
) -> tuple[np.ndarray, np.ndarray]:
    """SimCC logits [N, K, Wx], [N, K, Wy] -> (locations [N, K, 2] in crop pixels, scores [N, K]).

    Location: argmax along each axis / split_ratio; score: the smaller of the two maxima; a
    point scoring <= 0 gets location -1 (before the division, as mmpose does).
    """
    num, keys = simcc_x.shape[:2]
    flat_x = simcc_x.reshape(num * keys, -1)
    flat_y = simcc_y.reshape(num * keys, -1)
    locations = np.stack([flat_x.argmax(axis=1), flat_y.argmax(axis=1)], axis=-1).astype(np.float32)
    scores = np.minimum(flat_x.max(axis=1), flat_y.max(axis=1))
    locations[scores <= 0.0] = -1
    locations /= split_ratio
    return locations.reshape(num, keys, 2), scores.reshape(num, keys)


def crop_to_image(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int] = POSE_INPUT_SIZE
) -> np.ndarray:
    """Points [K, 2] in crop pixels -> image pixels."""
    return points / np.asarray(input_size, dtype=np.float64) * scale + center - scale / 2.0


# ----------------------------------------------------------------------------- session

def _providers(device: str) -> list[str]:
    import onnxruntime

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        warnings.warn(
            "onnxruntime has no CUDA execution provider (install onnxruntime-gpu); DWPose runs on CPU",
            stacklevel=3,
        )
        return ["CPUExecutionProvider"]
    raise InputError(f"--device: unknown device {device!r} for the ONNX pose backend (expected cpu or cuda[:N])")


def _open_session(path: Path, providers: list[str], device: str, what: str):
    import onnxruntime

    options = []
    for provider in providers:
        if provider == "CUDAExecutionProvider" and ":" in device:
            options.append({"device_id": int(device.split(":", 1)[1])})
        else:
            options.append({})
    try:
        return onnxruntime.InferenceSession(os.fspath(path), providers=providers, provider_options=options)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise InputError(f"{what}: {path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


class OnnxWholebody(Detector):
    """YOLOX-L + DWPose (dw-ll_ucoco_384) whole-body detector on onnxruntime."""

    name = "onnx"

    def __init__(self, pose_path: str | os.PathLike, det_path: str | os.PathLike, device: str = "cpu") -> None:
        providers = _providers(device)
        self.det_session = _open_session(Path(det_path), providers, device, "--yolox_ckpt")
        self.pose_session = _open_session(Path(pose_path), providers, device, "--dwpose_ckpt")
        self.det_input_size = self._static_hw(self.det_session, YOLOX_INPUT_SIZE, "--yolox_ckpt", det_path)
        pose_h, pose_w = self._static_hw(
            self.pose_session, (POSE_INPUT_SIZE[1], POSE_INPUT_SIZE[0]), "--dwpose_ckpt", pose_path
        )
        self.pose_input_size = (pose_w, pose_h)
        outputs = [o.name for o in self.pose_session.get_outputs()]
        if len(outputs) != 2:
            raise InputError(f"--dwpose_ckpt: {pose_path} has outputs {outputs}, expected simcc_x and simcc_y")
        # Name order when the names are the usual ones, else the file's order.
        self.pose_outputs = ["simcc_x", "simcc_y"] if set(outputs) == {"simcc_x", "simcc_y"} else outputs

    @staticmethod
    def _static_hw(session, default: tuple[int, int], flag: str, path) -> tuple[int, int]:
        shape = session.get_inputs()[0].shape
        if len(shape) != 4:
            raise InputError(f"{flag}: {path} takes input of shape {shape}, expected [N, 3, H, W]")
        height, width = shape[2], shape[3]
        if isinstance(height, int) and isinstance(width, int):
            return height, width
        return default

    def boxes(self, image_bgr: np.ndarray) -> np.ndarray:
        """Person boxes [N, 4] xyxy pixels of image_bgr, best first."""
        blob, ratio = letterbox(image_bgr, self.det_input_size)
        name = self.det_session.get_inputs()[0].name
        raw = self.det_session.run(None, {name: blob[None]})[0]
        return person_boxes(raw[0], ratio, self.det_input_size)

    def keypoints(self, image_rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCO-WholeBody points of each box: ([N, K, 2] pixels, [N, K] scores)."""
        name = self.pose_session.get_inputs()[0].name
        all_points, all_scores = [], []
        for box in boxes:
            blob, center, scale = crop_person(image_rgb, box, self.pose_input_size)
            simcc_x, simcc_y = self.pose_session.run(self.pose_outputs, {name: blob[None]})
            points, scores = simcc_decode(simcc_x, simcc_y)
            all_points.append(crop_to_image(points[0], center, scale, self.pose_input_size))
            all_scores.append(scores[0])
        return np.stack(all_points), np.stack(all_scores)

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image_bgr.shape[:2]
        # The official DWposeDetector converts its OpenCV (BGR) frame with COLOR_RGB2BGR, so the
        # networks get the channels swapped; we feed the same arrays to give the same keypoints.
        image_as_official = np.ascontiguousarray(image_bgr[:, :, ::-1])
        boxes = self.boxes(image_as_official)
        if len(boxes) == 0:
            boxes = np.array([[0.0, 0.0, float(width), float(height)]])
        points, scores = self.keypoints(np.ascontiguousarray(image_as_official[:, :, ::-1]), boxes)
        if points.shape[1] != 133:
            raise InputError(f"--dwpose_ckpt: the model gives {points.shape[1]} keypoints, expected 133 (COCO-WholeBody)")
        return coco_wholebody_to_openpose(points, scores)
