"""DWPose ONNX pre/post-processing, on small synthetic graphs with the real models' I/O."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from steadydancer.pose.detect import detect_pose, make_detector  # noqa: E402
from steadydancer.pose.detect.onnx_backend import (  # noqa: E402
    FLIP_INDICES,
    POSE_MEAN,
    POSE_STD,
    crop_person,
    crop_to_image,
    crop_warp_matrix,
    letterbox,
    merge_flip_test,
    nms,
    person_boxes,
    simcc_decode,
    yolox_decode,
)

ANCHORS = 80 * 80 + 40 * 40 + 20 * 20  # 8400 for a 640 x 640 input


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolox_graph(path, raw: np.ndarray):
    """images [1,3,640,640] -> output [1,8400,85]: a fixed head output (+ 0 x the input)."""
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["raw", "z"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "yolox_fake",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, ANCHORS, 85])],
        initializer=[
            numpy_helper.from_array(raw[None].astype(np.float32), "raw"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return _save(graph, path)


def pose_graph(path, x_gain=None):
    """input [1,3,384,288] -> simcc_x [1,133,576], simcc_y [1,133,768].

    Every keypoint's SimCC is the crop's brightest value per column (x) and per row (y), each
    crop pixel spread over split_ratio = 2 bins: a bright spot in the crop becomes the argmax.
    x_gain [133] (default all ones) multiplies each keypoint's x vector.
    """
    gain = np.ones(133, np.float32) if x_gain is None else np.asarray(x_gain, np.float32)
    spread_x = np.kron(np.eye(288), np.ones((1, 2))).astype(np.float32)  # [288, 576]
    spread_y = np.kron(np.eye(384), np.ones((1, 2))).astype(np.float32)  # [384, 768]
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["cols"], axes=[1, 2], keepdims=0),  # [1, 288]
        helper.make_node("ReduceMax", ["input"], ["rows"], axes=[1, 3], keepdims=0),  # [1, 384]
        helper.make_node("MatMul", ["cols", "spread_x"], ["sx"]),
        helper.make_node("MatMul", ["rows", "spread_y"], ["sy"]),
        helper.make_node("Unsqueeze", ["sx", "axis1"], ["sx1"]),
        helper.make_node("Unsqueeze", ["sy", "axis1"], ["sy1"]),
        helper.make_node("Expand", ["sx1", "shape_x"], ["sx_all"]),
        helper.make_node("Mul", ["sx_all", "gain"], ["simcc_x"]),
        helper.make_node("Expand", ["sy1", "shape_y"], ["simcc_y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dwpose_fake",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 384, 288])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, 576]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, 768]),
        ],
        initializer=[
            numpy_helper.from_array(spread_x, "spread_x"),
            numpy_helper.from_array(spread_y, "spread_y"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([1, 133, 576], np.int64), "shape_x"),
            numpy_helper.from_array(np.array([1, 133, 768], np.int64), "shape_y"),
            numpy_helper.from_array(gain.reshape(1, 133, 1), "gain"),
        ],
    )
    return _save(graph, path)


def _grid_index(stride: int, gx: int, gy: int) -> int:
    offset = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return offset + gy * (640 // stride) + gx


def raw_for_boxes(boxes_in_input: list[tuple]) -> np.ndarray:
    """Raw head output holding the given (x1, y1, x2, y2, person score[, class-1 score]) boxes
    in 640-input pixels (objectness 1, one box per stride-32 cell)."""
    raw = np.zeros((ANCHORS, 85), np.float32)
    raw[:, 2:4] = 0.0
    for x1, y1, x2, y2, score, *other in boxes_in_input:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        stride = 32
        gx, gy = int(cx // stride), int(cy // stride)
        row = _grid_index(stride, gx, gy)
        raw[row, 0:2] = [cx / stride - gx, cy / stride - gy]
        raw[row, 2:4] = [np.log(w / stride), np.log(h / stride)]
        raw[row, 4] = 1.0
        raw[row, 5] = score
        raw[row, 6] = other[0] if other else 0.0
    return raw


def test_letterbox_scales_into_the_top_left_and_pads_114():
    image = np.full((300, 600, 3), 7, np.uint8)
    blob, scale_factor = letterbox(image)
    assert scale_factor == pytest.approx((640 / 600, 640 / 600))
    assert blob.shape == (3, 640, 640) and blob.dtype == np.float32
    assert blob[:, :320, :].max() == 7 and blob[:, 320:, :].min() == 114


def test_letterbox_rounds_sizes_like_mmcv_imrescale():
    # 299 * 640 / 600 = 318.93: mmcv rounds to 319 rows (truncation would give 318), and the
    # boxes are mapped back with the per-axis factors new / old, as mmdet's scale_factor.
    blob, (w_scale, h_scale) = letterbox(np.full((299, 600, 3), 7, np.uint8))
    assert blob[:, 318, 0].max() == 7 and blob[:, 319, 0].min() == 114
    assert w_scale == pytest.approx(640 / 600) and h_scale == pytest.approx(319 / 299)


def test_yolox_decode_and_person_boxes_with_nms():
    raw = raw_for_boxes([(100, 60, 300, 500, 0.95), (140, 60, 330, 500, 0.9), (400, 100, 600, 400, 0.25)])
    decoded = yolox_decode(raw)
    row = _grid_index(32, 200 // 32, 280 // 32)
    assert decoded[row, :4] == pytest.approx([200, 280, 200, 440], abs=1e-3)
    boxes = person_boxes(raw, 0.5)
    # the overlapping weaker box (IoU 0.70 > 0.65) is suppressed, the 0.25 one is under 0.5
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32
    assert boxes[0] == pytest.approx([200, 120, 600, 1000], abs=1e-2)
    assert person_boxes(np.zeros((ANCHORS, 85), np.float32), 1.0).shape == (0, 4)


def test_person_boxes_follow_the_official_thresholds_and_order():
    raw = raw_for_boxes([
        (100, 100, 300, 500, 0.90),  # A: IoU 0.74 with C -> suppressed by the 0.65 NMS
        (130, 100, 330, 500, 0.95),  # C: best
        (400, 100, 600, 500, 0.80),  # B
        (450, 100, 650, 500, 0.70),  # E: IoU 0.60 with B -> kept (NMS 0.65, not 0.45)
        (20, 540, 120, 620, 0.50),  # score exactly 0.5: dropped (wholebody.py keeps > 0.5)
        (200, 540, 300, 620, 0.52),  # kept
        (400, 540, 500, 620, 0.90, 0.95),  # a person score, but another class wins the argmax
    ])
    boxes = person_boxes(raw, (1.0, 2.0))  # x and y mapped back with their own factors
    expected = [(130, 50, 330, 250), (400, 50, 600, 250), (450, 50, 650, 250), (200, 270, 300, 310)]
    np.testing.assert_allclose(boxes, expected, atol=1e-2)


def test_yolox_nms_is_per_class():
    # a stronger box of another class in the same place does not suppress the person
    raw = raw_for_boxes([(100, 100, 300, 500, 0.9), (130, 100, 330, 500, 0.0, 0.99)])
    assert person_boxes(raw, 1.0).shape == (1, 4)


def test_nms_counts_areas_with_the_plus_one_convention():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], float)  # 10x10 boxes sharing 5 columns
    # IoU = 50 / 150 = 1/3 with +1 areas (it would be 45/117 without)
    assert nms(boxes, np.array([0.9, 0.8]), 0.34) == [0, 1]
    assert nms(boxes, np.array([0.9, 0.8]), 0.33) == [0]
    # mmcv's nms op (YOLOX test_cfg) counts sizes without the +1: IoU 36/126 = 0.286
    assert nms(boxes, np.array([0.8, 0.9]), 0.29, pixel_offset=0.0) == [1, 0]
    assert nms(boxes, np.array([0.8, 0.9]), 0.28, pixel_offset=0.0) == [1]


def test_simcc_decode_argmax_split_ratio_and_min_score():
    simcc_x = np.full((1, 3, 576), -1.0)
    simcc_y = np.full((1, 3, 768), -1.0)
    simcc_x[0, 0, 100], simcc_y[0, 0, 301] = 0.8, 0.6
    simcc_x[0, 1, 10], simcc_y[0, 1, 20] = 0.5, 0.9
    locations, scores = simcc_decode(simcc_x, simcc_y)
    assert locations[0, 0] == pytest.approx([50.0, 150.5])
    assert scores[0, :2] == pytest.approx([0.6, 0.5])
    assert locations[0, 2] == pytest.approx([-0.5, -0.5]) and scores[0, 2] == pytest.approx(-1.0)


def test_crop_keeps_aspect_and_back_projects_exactly():
    image = np.zeros((500, 400, 3), np.uint8)
    image[200, 150] = 255
    blob, center, scale = crop_person(image, np.array([100.0, 100.0, 200.0, 400.0]))
    assert blob.shape == (3, 384, 288)
    assert center == pytest.approx([150, 250])
    assert scale[0] / scale[1] == pytest.approx(288 / 384) and scale[1] == pytest.approx(375)
    background = (0 - POSE_MEAN) / POSE_STD
    assert blob[:, 0, 0] == pytest.approx(background, abs=1e-5)
    row, col = np.unravel_index(blob[0].argmax(), blob[0].shape)
    assert crop_to_image(np.array([[col, row]], float), center, scale)[0] == pytest.approx([150, 200], abs=1.0)


def test_onnx_backend_end_to_end_on_synthetic_graphs(tmp_path):
    height, width = 768, 1024  # detect_resolution 768 keeps this size
    image = np.zeros((height, width, 3), np.uint8)
    spot_x, spot_y = 612, 400
    image[spot_y - 2 : spot_y + 3, spot_x - 2 : spot_x + 3] = 255
    ratio = 640 / 1024
    box = (520, 200, 700, 640)  # a person box around the spot, original pixels
    raw = raw_for_boxes([tuple(v * ratio for v in box) + (0.9,)])
    detector = make_detector(
        "auto", dwpose_onnx=pose_graph(tmp_path / "dw-ll_ucoco_384.onnx"),
        yolox_onnx=yolox_graph(tmp_path / "yolox_l.onnx", raw),
    )
    assert detector.name == "onnx"
    boxes = detector.boxes(image[:, :, ::-1].copy())
    assert boxes.shape == (1, 4) and boxes[0] == pytest.approx(box, abs=0.05)
    pose = detect_pose(detector, image, detect_resolution=768)
    candidate = np.array(pose["bodies"]["candidate"])
    # every point decodes to the bright spot; the neck (mean of shoulders) too
    np.testing.assert_allclose(candidate * [width, height], [[spot_x - 2, spot_y - 2]] * 18, atol=2.0)
    assert pose["bodies"]["subset"][0] == [float(j) for j in range(18)]
    np.testing.assert_allclose(np.array(pose["hands"][1]) * [width, height], [[spot_x - 2, spot_y - 2]] * 21, atol=2.0)


def test_onnx_backend_uses_the_whole_image_when_no_box(tmp_path):
    image = np.zeros((256, 256, 3), np.uint8)
    image[62:67, 190:195] = 255
    detector = make_detector(
        "onnx", dwpose_onnx=pose_graph(tmp_path / "p.onnx"),
        yolox_onnx=yolox_graph(tmp_path / "d.onnx", np.zeros((ANCHORS, 85), np.float32)),
    )
    points, scores = detector.detect(image)
    assert points.shape == (1, 134, 2)
    assert points[0, 0] == pytest.approx([192, 64], abs=2.0)


def test_unreadable_onnx_file_is_an_input_error(tmp_path):
    from steadydancer.errors import InputError

    (tmp_path / "p.onnx").write_bytes(b"garbage")
    (tmp_path / "d.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="--yolox_ckpt"):
        make_detector("onnx", dwpose_onnx=tmp_path / "p.onnx", yolox_onnx=tmp_path / "d.onnx")


# COCO-WholeBody flip_indices as mmpose derives them from the `swap` names of
# configs/_base_/datasets/coco_wholebody.py (body, feet, 68 face points, then the two hands).
MMPOSE_COCO_WHOLEBODY_FLIP_INDICES = (
    [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 20, 21, 22, 17, 18, 19]
    + [39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23]
    + [49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 50, 51, 52, 53, 58, 57, 56, 55, 54]
    + [68, 67, 66, 65, 70, 69, 62, 61, 60, 59, 64, 63]
    + [77, 76, 75, 74, 73, 72, 71, 82, 81, 80, 79, 78, 87, 86, 85, 84, 83, 90, 89, 88]
    + list(range(112, 133))
    + list(range(91, 112))
)


def test_flip_indices_are_coco_wholebody_mirror_twins():
    assert FLIP_INDICES == MMPOSE_COCO_WHOLEBODY_FLIP_INDICES
    assert all(FLIP_INDICES[FLIP_INDICES[k]] == k for k in range(133))


def test_merge_flip_test_reverses_x_swaps_sides_and_averages():
    simcc_x, simcc_y = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    flipped_x, flipped_y = np.zeros_like(simcc_x), np.zeros_like(simcc_y)
    simcc_x[0, 2, 100] = 1.0
    flipped_x[0, 1, 10] = 1.0  # left eye of the mirror pass = right eye (2) of the crop
    flipped_y[0, 1, 300] = 1.0
    flipped_x[0, 0, 20] = 1.0  # the nose is its own twin
    merged_x, merged_y = merge_flip_test(simcc_x, simcc_y, flipped_x, flipped_y)
    assert merged_x.dtype == np.float32
    # bin b of the mirror pass lands on bin 575 - b: no extra one-bin shift
    assert merged_x[0, 2, 565] == 0.5 and merged_x[0, 2, 100] == 0.5 and merged_x[0, 2].sum() == 1.0
    assert merged_y[0, 2, 300] == 0.5 and merged_y[0, 2].sum() == 0.5
    assert merged_x[0, 0, 555] == 0.5 and merged_x[0, 1].sum() == 0.0


def test_crop_warp_matrix_is_a_scale_and_shift():
    center, scale = np.array([150.0, 250.0], np.float32), np.array([281.25, 375.0], np.float32)
    matrix = crop_warp_matrix(center, scale, (288, 384))
    factor = 288 / 281.25
    expected = [[factor, 0, 144 - factor * 150], [0, factor, 192 - factor * 250]]
    np.testing.assert_allclose(matrix, expected, atol=1e-4)


def test_flip_test_reaches_keypoints_only_the_mirror_pass_sees(tmp_path):
    # Only the left eye (1) has a non-zero x vector, so without the flip test the right eye (2)
    # would score 0 (missing); with it, the mirror pass's left eye becomes the right eye, found
    # at the same place, and both eyes average one real and one zero x vector.
    gain = np.zeros(133, np.float32)
    gain[1] = 1.0
    detector = make_detector(
        "onnx", dwpose_onnx=pose_graph(tmp_path / "p.onnx", x_gain=gain),
        yolox_onnx=yolox_graph(tmp_path / "d.onnx", np.zeros((ANCHORS, 85), np.float32)),
    )
    image = np.zeros((400, 300, 3), np.uint8)
    image[118:123, 68:73] = 255  # off-centre, so an un-reversed x vector would land elsewhere
    points, scores = detector.keypoints(image, np.array([[0, 0, 300, 400]], np.float32))
    assert points.shape == (1, 133, 2) and points.dtype == np.float32
    np.testing.assert_allclose(points[0, 1], [70, 120], atol=1.5)
    np.testing.assert_allclose(points[0, 2], points[0, 1], atol=1.0)
    assert scores[0, 1] == pytest.approx(scores[0, 2]) and scores[0, 1] > 0
    # x maximum halved by the averaging with a zero vector; y (same in both passes) is not
    blob = crop_person(image, np.array([0, 0, 300, 400], np.float32))[0]
    assert scores[0, 1] == pytest.approx(0.5 * blob.max(), rel=1e-5)
    # a missing point is crop location -1 / 2.0, back-projected like any other
    missing = [-0.5 / 288 * 375 + 150 - 187.5, -0.5 / 384 * 500 + 200 - 250]
    assert scores[0, 3] == 0.0 and points[0, 3] == pytest.approx(missing, abs=1e-3)
