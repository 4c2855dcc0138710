"""Other ONNX exports of the pose networks users have (issue 14 failure 7): fp16 models, YOLOX with
NMS inside (rtmlib / mmdeploy end2end), and onnxruntime failures as one line."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from steadydancer.errors import InputError  # noqa: E402
from steadydancer.pose.detect import make_detector  # noqa: E402
from steadydancer.pose.detect.onnx_backend import person_boxes_from_dets  # noqa: E402
from test_detect_onnx import _save, pose_graph, raw_for_boxes, yolox_graph  # noqa: E402


def as_fp16(path, out_path):
    """The same graph with float16 input and outputs (as an fp16 export declares them)."""
    model = onnx.load(str(path))
    graph = model.graph
    casts_in, casts_out = [], []
    for value in graph.input:
        casts_in.append(helper.make_node("Cast", [value.name + "_16"], [value.name], to=TensorProto.FLOAT))
        value.name += "_16"
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for value in graph.output:
        for node in graph.node:
            node.output[:] = [o + "_32" if o == value.name else o for o in node.output]
        casts_out.append(helper.make_node("Cast", [value.name + "_32"], [value.name], to=TensorProto.FLOAT16))
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = casts_in + list(graph.node) + casts_out
    del graph.node[:]
    graph.node.extend(nodes)
    return _save(graph, out_path)


def yolox_with_nms_graph(path, dets: np.ndarray, labels: np.ndarray):
    """images [1,3,640,640] -> dets [1,N,5], labels [1,N] (mmdeploy end2end output names)."""
    nodes = [helper.make_node("ReduceMax", ["images"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["d", "z"], ["dets"]),
             helper.make_node("Identity", ["l"], ["labels"])]
    graph = helper.make_graph(
        nodes, "yolox_end2end",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, len(dets), 5]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [1, len(dets)])],
        initializer=[numpy_helper.from_array(dets[None].astype(np.float32), "d"),
                     numpy_helper.from_array(labels[None].astype(np.int64), "l"),
                     numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return _save(graph, path)


def person_image():
    image = np.zeros((768, 1024, 3), np.uint8)
    image[398:403, 610:615] = 255
    return image


def test_fp16_exports_get_float16_input_and_give_the_float32_results(tmp_path):
    ratio = 640 / 1024
    box = (520, 200, 700, 640)
    raw = raw_for_boxes([tuple(v * ratio for v in box) + (0.9,)])
    yolox, pose = yolox_graph(tmp_path / "y.onnx", raw), pose_graph(tmp_path / "p.onnx")
    plain = make_detector("onnx", dwpose_onnx=pose, yolox_onnx=yolox)
    half = make_detector("onnx", dwpose_onnx=as_fp16(pose, tmp_path / "p16.onnx"),
                         yolox_onnx=as_fp16(yolox, tmp_path / "y16.onnx"))
    image = person_image()
    boxes = half.boxes(image[:, :, ::-1].copy())
    assert boxes[0] == pytest.approx(box, abs=0.5)      # float16 head output
    points, scores = half.detect(image)
    want_points, want_scores = plain.detect(image)
    np.testing.assert_allclose(points, want_points, atol=1.0)


def test_yolox_export_with_nms_inside_gives_person_boxes(tmp_path):
    ratio = 640 / 1024
    dets = np.array([[520, 200, 700, 640, 0.9], [100, 100, 200, 300, 0.95], [0, 0, 50, 50, 0.4],
                     [522, 202, 702, 642, 0.8]], np.float32)
    dets[:, :4] *= ratio
    labels = np.array([0, 2, 0, 0])
    detector = make_detector("onnx", dwpose_onnx=pose_graph(tmp_path / "p.onnx"),
                             yolox_onnx=yolox_with_nms_graph(tmp_path / "y.onnx", dets, labels))
    boxes = detector.boxes(person_image()[:, :, ::-1].copy())
    # the car (label 2) and the 0.4 box go, the overlapping 0.8 box is suppressed
    assert boxes.shape == (1, 4) and boxes[0] == pytest.approx((520, 200, 700, 640), abs=0.01)
    points, _ = detector.detect(person_image())
    assert points.shape == (1, 134, 2)
    no_labels = person_boxes_from_dets(dets, None, ratio)
    assert len(no_labels) == 2       # without labels every box counts as a person


def test_onnxruntime_failure_is_one_line(tmp_path):
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["output"])]
    graph = helper.make_graph(
        nodes, "broken", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [7, None, 85])],
        initializer=[numpy_helper.from_array(np.array([7, -1, 85], np.int64), "shape")])
    detector = make_detector("onnx", dwpose_onnx=pose_graph(tmp_path / "p.onnx"),
                             yolox_onnx=_save(graph, tmp_path / "broken.onnx"))
    with pytest.raises(InputError, match=r"--yolox_ckpt: onnxruntime could not run .*broken\.onnx") as error:
        detector.detect(person_image())
    assert "\n" not in str(error.value)
