"""DWPose on onnxruntime: YOLOX-L person boxes, then the dw-ll_ucoco_384 SimCC whole-body model.

Pre- and post-processing follow the official SteadyDancer pose path (mmdet YOLOX-L with
``yolox_l_8xb8-300e_coco.py``, mmpose DWPose-L with ``dwpose-l_384x288.py``, glued together by
``preprocess/pose/script/wholebody.py``), so that ONNX exports of the same two networks give
what mmdet + mmpose give:

- YOLOX input (mmdet test pipeline): ``Resize(scale=(640, 640), keep_ratio=True)`` = mmcv
  ``imrescale``: factor r = min(640 / long side, 640 / short side), new size
  ``int(side * r + 0.5)`` (rounded), bilinear; ``Pad(pad_to_square=True)`` with 114 at the
  bottom/right; the data preprocessor neither normalises nor swaps channels (float 0..255).
  Boxes go back to the image by dividing x by new_w / w and y by new_h / h (mmdet's per-axis
  ``scale_factor``).
- YOLOX decode and ``test_cfg`` (mmdet ``YOLOXHead.predict_by_feat``): priors at
  (col, row) x stride with no half-cell offset, xy = p x stride + prior, wh = exp(p) x stride;
  label = argmax over the 80 classes, score = objectness x that class score, kept when
  ``>= score_thr 0.01``; class-aware NMS at IoU 0.65 (mmcv ``nms``: no +1 in areas, a box
  is dropped when its IoU with a better one is > 0.65); no cap on the number of boxes.
- Person boxes (``wholebody.py``): label 0 with score > 0.5, then mmpose's numpy ``nms`` at
  0.7 (areas with +1, dropped when IoU > 0.7), best first.
- Pose crop (mmpose ``GetBBoxCenterScale`` + ``TopdownAffine``, use_udp off): float32 box ->
  center, scale = size x 1.25, widened to w:h = 288:384, ``get_warp_matrix`` (three float32
  point pairs: centre, half a width to the left, and that vector turned 90 degrees), 288x384
  linear warp; ImageNet mean/std in 0..255 units (the preprocessor's ``bgr_to_rgb=True``
  swap is the second swap in ``detect``).
- Flip test (``test_cfg=dict(flip_test=True)``, mmpose ``RTMCCHead.predict`` +
  ``flip_vectors``): the network also runs on the crop mirrored left-right; its SimCC x
  vectors are reversed (bin b -> bin Wx - 1 - b, no extra shift) and both its x and y
  vectors take the rows of the mirror keypoints (COCO-WholeBody ``flip_indices``); the two
  passes are averaged, (a + b) x 0.5, before decoding.
- Decode (``SimCCLabel.decode`` / ``get_simcc_maximum``, no DARK, no softmax): argmax per
  axis, score = the smaller of the two maxima, location -1 where score <= 0, then / 2.0;
  back-projection (``TopdownPoseEstimator.add_pred_to_datasample``):
  p / (288, 384) x scale + center - scale / 2.
- No box found: the whole image [0, 0, w, h] is the box (mmpose ``inference_topdown``).
- Other exports: fp16 models get float16 input (outputs read as float32); YOLOX exports with
  NMS inside (dets [1, N, 5] + labels, as rtmlib and mmdeploy make them) skip the decode and
  mmdet's NMS, keeping only the person rule. The networks are whatever the files hold: the
  ``yolox_l.onnx`` of DWPose's release (yzd-v) appears to be Megvii's YOLOX-L export, not mmdet's
  ``yolox_l_8x8_300e_coco`` weights, so its boxes are not claimed to equal the official ones.
Channel order: the official DWposeDetector applies COLOR_RGB2BGR to an OpenCV (already BGR)
frame, so YOLOX and the pose model see the channels swapped relative to their training; both
get the same arrays here.
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
# mmdet YOLOX test_cfg (yolox_l_8xb8-300e_coco.py): score_thr=0.01, nms iou_threshold=0.65.
YOLOX_SCORE_THRESHOLD = 0.01
YOLOX_NMS_IOU = 0.65
# wholebody.py: label 0 and score > 0.5, then mmpose nms(bboxes, 0.7).
PERSON_LABEL = 0
PERSON_MIN_SCORE = 0.5
PERSON_NMS_IOU = 0.7

POSE_INPUT_SIZE = (288, 384)  # (width, height), mmpose codec input_size
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
# ImageNet mean / std in 0..255 units, RGB order.
POSE_MEAN = np.array([123.675, 116.28, 103.53])
POSE_STD = np.array([58.395, 57.12, 57.375])


def _coco_wholebody_flip_indices() -> list[int]:
    """Index of each COCO-WholeBody keypoint's mirror twin (133 entries; mmpose's dataset meta)."""
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]  # body
    pairs += [(17, 20), (18, 21), (19, 22)]  # feet: big toe, small toe, heel
    face = 23  # the 68 face points follow in iBUG order
    pairs += [(face + i, face + 16 - i) for i in range(8)]  # jaw line
    pairs += [(face + 17 + i, face + 26 - i) for i in range(5)]  # brows
    pairs += [(face + 31, face + 35), (face + 32, face + 34)]  # nostrils
    pairs += [(face + a, face + b) for a, b in ((36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46))]  # eyes
    pairs += [(face + a, face + b) for a, b in ((48, 54), (49, 53), (50, 52), (55, 59), (56, 58))]  # outer lips
    pairs += [(face + a, face + b) for a, b in ((60, 64), (61, 63), (65, 67))]  # inner lips
    pairs += [(91 + i, 112 + i) for i in range(21)]  # left hand <-> right hand
    flip = list(range(133))
    for a, b in pairs:
        flip[a], flip[b] = b, a
    return flip


FLIP_INDICES = _coco_wholebody_flip_indices()


# ----------------------------------------------------------------------------- YOLOX

def letterbox(
    image: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT_SIZE
) -> tuple[np.ndarray, tuple[float, float]]:
    """Image [H, W, 3] uint8 -> (YOLOX input [3, h_in, w_in] float32, (w_scale, h_scale)).

    mmcv ``imrescale`` to fit (w_in, h_in) keeping the aspect ratio (sizes rounded to the
    nearest pixel, bilinear), placed at the top-left, padded with 114. The returned per-axis
    factors are new size / old size, as mmdet's ``scale_factor``.
    """
    in_h, in_w = input_size
    height, width = image.shape[:2]
    ratio = min(max(in_h, in_w) / max(height, width), min(in_h, in_w) / min(height, width))
    new_w, new_h = int(width * ratio + 0.5), int(height * ratio + 0.5)
    if new_w > in_w or new_h > in_h:
        raise InputError(
            f"yolox onnx: input {in_w}x{in_h} cannot hold a {width}x{height} image resized to {new_w}x{new_h}"
        )
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = np.full((in_h, in_w, 3), YOLOX_PAD_VALUE, dtype=np.uint8)
    padded[:new_h, :new_w] = resized
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)
    return blob, (new_w / width, new_h / height)


def yolox_decode(raw: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT_SIZE) -> np.ndarray:
    """Raw YOLOX head output [A, 5 + C] (centre offsets, log sizes, obj, classes) -> float32
    [A, 5 + C] with (cx, cy, w, h) in input pixels; A = sum over strides of (h_in/s) (w_in/s),
    row-major, priors at (col, row) x stride."""
    grids, strides = [], []
    for stride in YOLOX_STRIDES:
        rows, cols = input_size[0] // stride, input_size[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xs, ys), axis=2).reshape(-1, 2) * stride)
        strides.append(np.full((rows * cols, 1), stride))
    priors = np.concatenate(grids, axis=0).astype(np.float32)
    stride = np.concatenate(strides, axis=0).astype(np.float32)
    if raw.shape[0] != len(priors):
        raise InputError(
            f"yolox onnx: output has {raw.shape[0]} anchors, expected {len(priors)} for input {input_size}"
        )
    decoded = raw.astype(np.float32).copy()
    decoded[:, :2] = raw[:, :2] * stride + priors
    decoded[:, 2:4] = np.exp(raw[:, 2:4].astype(np.float32)) * stride
    return decoded


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, pixel_offset: float = 1.0) -> list[int]:
    """Greedy NMS over xyxy boxes [N, 4]; indices kept, best first.

    A box is dropped when its IoU with a kept one is > iou_threshold. ``pixel_offset`` is added
    to widths and heights: 1 as mmpose's numpy ``nms``, 0 as mmcv's ``nms`` op.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + pixel_offset) * (y2 - y1 + pixel_offset)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + pixel_offset)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + pixel_offset)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return keep


def detections(
    raw: np.ndarray, scale_factor: float | tuple[float, float], input_size: tuple[int, int] = YOLOX_INPUT_SIZE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmdet YOLOX post-processing: raw output [A, 5 + C] -> (boxes [M, 4] xyxy image pixels
    float32, scores [M], labels [M]) after score_thr and class-wise NMS, best first.

    Only the person class is run through NMS: mmdet's NMS is per class and nothing downstream
    uses other classes (mmcv's batched_nms separates classes by shifting boxes, which is the
    same thing for boxes with non-negative coordinates).
    """
    w_scale, h_scale = (scale_factor, scale_factor) if np.isscalar(scale_factor) else scale_factor
    decoded = yolox_decode(raw, input_size)
    class_scores = decoded[:, 5:]
    labels = class_scores.argmax(axis=1)
    scores = decoded[:, 4] * class_scores[np.arange(len(labels)), labels]
    centre, half = decoded[:, :2], decoded[:, 2:4] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    boxes = boxes / np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
    candidates = (scores >= YOLOX_SCORE_THRESHOLD) & (labels == PERSON_LABEL)
    boxes, scores, labels = boxes[candidates], scores[candidates], labels[candidates]
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    keep = nms(boxes, scores, YOLOX_NMS_IOU, pixel_offset=0.0)
    return boxes[keep].astype(np.float32), scores[keep], labels[keep]


def person_boxes(
    raw: np.ndarray, scale_factor: float | tuple[float, float], input_size: tuple[int, int] = YOLOX_INPUT_SIZE
) -> np.ndarray:
    """Raw YOLOX output [A, 85] -> person boxes [N, 4] xyxy float32 in original-image pixels,
    best first (label 0, score > 0.5, then NMS 0.7 with +1 areas, as wholebody.py)."""
    boxes, scores, labels = detections(raw, scale_factor, input_size)
    chosen = (labels == PERSON_LABEL) & (scores > PERSON_MIN_SCORE)
    boxes, scores = boxes[chosen], scores[chosen]
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    return boxes[nms(boxes, scores, PERSON_NMS_IOU, pixel_offset=1.0)]


def person_boxes_from_dets(dets: np.ndarray, labels: np.ndarray | None,
                           scale_factor: float | tuple[float, float]) -> np.ndarray:
    """Person boxes of a YOLOX export with NMS inside (mmdeploy ``end2end``, what rtmlib accepts):
    dets [N, 5] (x1, y1, x2, y2, score in input pixels), labels [N] (None: one class, person)
    -> boxes [M, 4] xyxy float32 in original-image pixels, best first, after the same person
    rule as :func:`person_boxes` (label 0, score > 0.5, NMS 0.7 with +1 areas). The export's own
    score threshold and NMS replace mmdet's test_cfg, so the boxes may differ from the raw path's.
    """
    w_scale, h_scale = (scale_factor, scale_factor) if np.isscalar(scale_factor) else scale_factor
    dets = dets.astype(np.float32).reshape(-1, 5)
    boxes = dets[:, :4] / np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
    scores = dets[:, 4]
    chosen = scores > PERSON_MIN_SCORE
    if labels is not None:
        chosen &= labels.reshape(-1) == PERSON_LABEL
    boxes, scores = boxes[chosen], scores[chosen]
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    return boxes[nms(boxes, scores, PERSON_NMS_IOU, pixel_offset=1.0)]


# ----------------------------------------------------------------------------- RTMPose / SimCC

def box_to_center_scale(box: np.ndarray, padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box [4] -> (center [2], scale [2] = padded (w, h)), float32 as mmpose computes them."""
    box = np.asarray(box, dtype=np.float32)
    center = (box[2:] + box[:2]) * np.float32(0.5)
    scale = (box[2:] - box[:2]) * np.float32(padding)
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow (w, h) so that w / h == aspect_ratio, never shrinking either side (dtype kept)."""
    width, height = scale
    if width > height * aspect_ratio:
        return np.array([width, width / aspect_ratio], dtype=scale.dtype)
    return np.array([height * aspect_ratio, height], dtype=scale.dtype)


def crop_warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """2x3 affine taking the box (center, scale (w, h)) onto an output_size (w, h) image, no rotation.

    mmpose ``get_warp_matrix`` (use_udp off): float32 point pairs centre -> output centre,
    centre - (w/2, 0) -> output centre - (out_w/2, 0), and the third point of each triangle
    from turning that vector 90 degrees; the same points give the same float rounding.
    """
    out_w, out_h = output_size
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([scale[0] * -0.5, 0.0])
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = np.array([out_w * 0.5, out_h * 0.5]) + np.array([out_w * -0.5, 0.0])
    for points in (src, dst):
        direction = points[0] - points[1]
        points[2] = points[1] + np.array([-direction[1], direction[0]])
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
    normalised = (crop.astype(np.float32) - POSE_MEAN.astype(np.float32)) / POSE_STD.astype(np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32), center, scale


def merge_flip_test(
    simcc_x: np.ndarray,
    simcc_y: np.ndarray,
    flipped_x: np.ndarray,
    flipped_y: np.ndarray,
    flip_indices: list[int] = FLIP_INDICES,
) -> tuple[np.ndarray, np.ndarray]:
    """Average the SimCC outputs [N, K, W] of a crop and of its mirror image (mmpose flip test).

    The mirror pass is mapped back first: rows taken from each keypoint's mirror twin, x
    vectors reversed (bin b <- bin Wx - 1 - b; no extra shift); then (a + b) * 0.5.
    """
    back_x = flipped_x[:, flip_indices, ::-1]
    back_y = flipped_y[:, flip_indices]
    half = np.asarray(0.5, dtype=simcc_x.dtype)
    return (simcc_x + back_x) * half, (simcc_y + back_y) * half


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
    """Points [K, 2] in crop pixels -> image pixels (float32, as mmpose stores them)."""
    projected = points / np.asarray(input_size) * scale + center - 0.5 * scale
    return projected.astype(np.float32)


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
    session_options = onnxruntime.SessionOptions()
    session_options.log_severity_level = 4  # fatal only: a failing run is reported as one InputError line
    try:
        return onnxruntime.InferenceSession(os.fspath(path), sess_options=session_options, providers=providers,
                                            provider_options=options)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise InputError(f"{what}: {path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


_ONNX_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _run(session, output_names, image: np.ndarray, flag: str, path) -> list[np.ndarray]:
    """Run ``session`` on one image blob, given in the dtype the model's input declares (fp16
    exports take float16); outputs come back as float32 arrays. InputError (one line) when
    onnxruntime refuses to run the model."""
    model_input = session.get_inputs()[0]
    dtype = _ONNX_FLOAT_TYPES.get(model_input.type)
    if dtype is None:
        raise InputError(f"{flag}: {path} takes {model_input.type} input, expected a float image tensor")
    try:
        outputs = session.run(output_names, {model_input.name: image.astype(dtype)})
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{flag}: onnxruntime could not run {path} ({type(exc).__name__}: {message})") from None
    return [np.asarray(out, dtype=np.float32) if np.issubdtype(np.asarray(out).dtype, np.floating) else np.asarray(out)
            for out in outputs]


class OnnxWholebody(Detector):
    """YOLOX-L + DWPose (dw-ll_ucoco_384) whole-body detector on onnxruntime."""

    name = "onnx"

    def __init__(self, pose_path: str | os.PathLike, det_path: str | os.PathLike, device: str = "cpu") -> None:
        self.det_path, self.pose_path = det_path, pose_path
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
        blob, scale_factor = letterbox(image_bgr, self.det_input_size)
        outputs = _run(self.det_session, None, blob[None], "--yolox_ckpt", self.det_path)
        first = outputs[0].reshape(-1, outputs[0].shape[-1])
        if first.shape[-1] == 5:   # NMS inside the graph: dets [1, N, 5] (+ labels [1, N])
            labels = outputs[1] if len(outputs) > 1 and outputs[1].size == len(first) else None
            return person_boxes_from_dets(first, labels, scale_factor)
        if first.shape[-1] < 6:
            raise InputError(f"--yolox_ckpt: {self.det_path} gives output of shape {list(outputs[0].shape)}, "
                             f"expected raw YOLOX predictions [1, A, 5 + classes] or detections [1, N, 5]")
        return person_boxes(first, scale_factor, self.det_input_size)

    def keypoints(self, image_rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCO-WholeBody points of each box: ([N, K, 2] pixels, [N, K] scores)."""
        all_points, all_scores = [], []
        for box in boxes:
            blob, center, scale = crop_person(image_rgb, box, self.pose_input_size)
            simcc_x, simcc_y = _run(self.pose_session, self.pose_outputs, blob[None], "--dwpose_ckpt", self.pose_path)
            # Flip test (the DWPose config's test_cfg): the same crop mirrored left-right.
            mirrored = np.ascontiguousarray(blob[:, :, ::-1])
            flipped_x, flipped_y = _run(self.pose_session, self.pose_outputs, mirrored[None], "--dwpose_ckpt",
                                        self.pose_path)
            if simcc_x.shape[1] != len(FLIP_INDICES):
                raise InputError(
                    f"--dwpose_ckpt: the model gives {simcc_x.shape[1]} keypoints, expected 133 (COCO-WholeBody)"
                )
            simcc_x, simcc_y = merge_flip_test(simcc_x, simcc_y, flipped_x, flipped_y)
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
            boxes = np.array([[0, 0, width, height]], dtype=np.float32)
        points, scores = self.keypoints(np.ascontiguousarray(image_as_official[:, :, ::-1]), boxes)
        if points.shape[1] != 133:
            raise InputError(f"--dwpose_ckpt: the model gives {points.shape[1]} keypoints, expected 133 (COCO-WholeBody)")
        return coco_wholebody_to_openpose(points, scores)
