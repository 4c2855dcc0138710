"""The original DWPose / YOLOX-L ``.pth`` checkpoints through mmpose + mmdet (optional extra).

This is the official SteadyDancer path (mmdet YOLOX-L, boxes of class person scoring > 0.5,
NMS 0.7, then mmpose top-down DWPose with its flip test). mmpose, mmdet and mmcv are imported
only when this backend is built. The model configurations are written here as dicts (the
architecture numbers of yolox_l_8xb8-300e_coco and dwpose-l_384x288) so no config file is
needed. Checkpoints are read with torch's weights-only unpickler allowing only the mmengine
classes a checkpoint's meta data pickles (read_mm_checkpoint), and loaded strictly: a name or
shape that does not match stops with one line (load_strict) instead of leaving layers random.
The mmdet/mmpose run is not exercised by the test suite (mmcv has no wheel for torch 2.13 on
CPU); the checkpoint reading and strict loading are (tests/test_mmpose_checkpoint.py), and so is
the error path when mmpose is missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from steadydancer.errors import InputError

from .base import Detector
from .layout import coco_wholebody_to_openpose

DET_MIN_SCORE = 0.5
DET_NMS_IOU = 0.7

MISSING_MMPOSE = (
    "the .pth pose weights need mmpose, mmdet and mmcv (pip install 'steadydancer[mmpose]', "
    "with an mmcv build matching your torch); or give the ONNX files to --dwpose_ckpt and --yolox_ckpt"
)

_NORM = dict(type="BN", momentum=0.03, eps=0.001)
_ACT = dict(type="Swish")


def _yolox_l_config() -> dict:
    pipeline = [
        dict(type="mmdet.LoadImageFromNDArray"),
        dict(type="mmdet.Resize", scale=(640, 640), keep_ratio=True),
        dict(type="mmdet.Pad", pad_to_square=True, pad_val=dict(img=(114.0, 114.0, 114.0))),
        dict(type="mmdet.PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
    ]
    model = dict(
        type="YOLOX",
        data_preprocessor=dict(type="DetDataPreprocessor", pad_size_divisor=32),
        backbone=dict(
            type="CSPDarknet", deepen_factor=1.0, widen_factor=1.0, out_indices=(2, 3, 4),
            use_depthwise=False, spp_kernal_sizes=(5, 9, 13), norm_cfg=_NORM, act_cfg=_ACT,
        ),
        neck=dict(
            type="YOLOXPAFPN", in_channels=[256, 512, 1024], out_channels=256, num_csp_blocks=3,
            use_depthwise=False, upsample_cfg=dict(scale_factor=2, mode="nearest"), norm_cfg=_NORM, act_cfg=_ACT,
        ),
        bbox_head=dict(
            type="YOLOXHead", num_classes=80, in_channels=256, feat_channels=256, stacked_convs=2,
            strides=(8, 16, 32), use_depthwise=False, norm_cfg=_NORM, act_cfg=_ACT,
        ),
        test_cfg=dict(score_thr=0.01, nms=dict(type="nms", iou_threshold=0.65)),
    )
    return dict(
        default_scope="mmdet",
        model=model,
        test_dataloader=dict(dataset=dict(type="CocoDataset", pipeline=pipeline)),
        test_pipeline=pipeline,
    )


def _dwpose_l_config() -> dict:
    codec = dict(
        type="SimCCLabel", input_size=(288, 384), sigma=(6.0, 6.93), simcc_split_ratio=2.0,
        normalize=False, use_dark=False,
    )
    model = dict(
        type="TopdownPoseEstimator",
        data_preprocessor=dict(
            type="PoseDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True
        ),
        backbone=dict(
            _scope_="mmdet", type="CSPNeXt", arch="P5", expand_ratio=0.5, deepen_factor=1.0, widen_factor=1.0,
            out_indices=(4,), channel_attention=True, norm_cfg=dict(type="BN"), act_cfg=dict(type="SiLU"),
        ),
        head=dict(
            type="RTMCCHead", in_channels=1024, out_channels=133, input_size=codec["input_size"],
            in_featuremap_size=(9, 12), simcc_split_ratio=codec["simcc_split_ratio"], final_layer_kernel_size=7,
            gau_cfg=dict(
                hidden_dims=256, s=128, expansion_factor=2, dropout_rate=0.0, drop_path=0.0, act_fn="SiLU",
                use_rel_bias=False, pos_enc=False,
            ),
            loss=dict(type="KLDiscretLoss", use_target_weight=True, beta=10.0, label_softmax=True),
            decoder=codec,
        ),
        test_cfg=dict(flip_test=True),
    )
    pipeline = [
        dict(type="LoadImage"),
        dict(type="GetBBoxCenterScale"),
        dict(type="TopdownAffine", input_size=codec["input_size"]),
        dict(type="PackPoseInputs"),
    ]
    dataset = dict(type="CocoWholeBodyDataset", data_mode="topdown", pipeline=pipeline)
    return dict(
        default_scope="mmpose",
        model=model,
        train_dataloader=dict(dataset=dataset),
        test_dataloader=dict(dataset=dataset),
        val_dataloader=dict(dataset=dataset),
    )


# Classes an mmengine / mmcv checkpoint pickles besides tensors, by module -> names. mmengine puts its
# MessageHub's ``HistoryBuffer`` objects into ``meta`` (open-mmlab/mmengine#1655: they make
# ``torch.load(weights_only=True)`` fail), and dataset metadata carries numpy arrays and dtypes.
# Only these are let through torch's weights-only unpickler; anything else is refused.
MM_CHECKPOINT_CLASSES = {
    "mmengine.logging.history_buffer": ("HistoryBuffer",),
    "mmengine.logging.message_hub": ("MessageHub",),
    "mmengine.config.config": ("ConfigDict",),
}


def _placeholder(module: str, name: str) -> type:
    """A stand-in class spelled like ``module.name`` whose instances just keep their pickled state:
    the meta data is read past, never used, and mmengine need not be installed."""

    def setstate(self, state) -> None:
        self.__dict__["pickled_state"] = state

    return type(name, (), {"__module__": module, "__qualname__": name, "__setstate__": setstate})


def _numpy_globals() -> list:
    """numpy's array and dtype reconstruction functions and classes (1.x and 2.x spellings)."""
    import numpy as np

    allowed = [np.ndarray, np.dtype]
    for module_name in ("numpy.core.multiarray", "numpy._core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["_reconstruct"])
        except ImportError:
            continue
        for name in ("_reconstruct", "scalar"):
            function = getattr(module, name, None)
            if function is not None:
                allowed.append((function, f"{module_name}.{name}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [cls for cls in vars(dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return allowed


def read_mm_checkpoint(path: Path, flag: str) -> dict:
    """The state dict of an mmengine / mmcv ``.pth`` checkpoint (``module.`` prefix dropped).

    Read with torch's weights-only unpickler, which is given only the classes of
    MM_CHECKPOINT_CLASSES (as inert stand-ins) and numpy's array types: no code from the file
    runs. InputError (one line) for an unreadable file or one that pickles anything else.
    """
    import pickle

    import torch

    allowed = _numpy_globals() + [_placeholder(module, name) for module, names in MM_CHECKPOINT_CLASSES.items()
                                  for name in names]
    try:
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(allowed):
                checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        else:  # torch 2.4: only the process-wide list exists
            torch.serialization.add_safe_globals(allowed)
            checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it pickles {refused.group(1)}, which is not allowed" if refused else str(exc).splitlines()[0]
        raise InputError(f"{flag}: {path} is not a plain mmengine/mmcv checkpoint ({what})") from None
    except Exception as exc:
        raise InputError(f"{flag}: cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{flag}: {path} holds no state_dict of tensors")
    return {re.sub(r"^module\.", "", key): value for key, value in state.items()}


def _names(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_strict(model, state: dict, path: Path, flag: str) -> None:
    """Put ``state`` into ``model`` only if every name and shape matches; else one InputError line
    naming what is missing, unexpected and of another shape (no parameter is left random).

    mmdet 2.x YOLOX checkpoints also hold the EMA copies of mmdet's ExpMomentumEMAHook as buffers
    ``ema_<name with dots as underscores>`` (mmdetection #6156, #7936); mmdet's own loader skips
    them (a non-strict load's warning), so they are dropped here when they shadow a model tensor.
    """
    expected = model.state_dict()
    ema_copies = {"ema_" + name.replace(".", "_") for name in expected}
    state = {key: value for key, value in state.items() if key not in ema_copies}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                      for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        parts = [f"{label} {_names(names)}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("shape", reshaped)) if names]
        raise InputError(f"{flag}: {path} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _load_weights(model, path: Path, flag: str) -> None:
    load_strict(model, read_mm_checkpoint(path, flag), path, flag)


class MMPoseWholebody(Detector):
    """mmdet YOLOX-L + mmpose DWPose-L on the original .pth checkpoints."""

    name = "mmpose"

    def __init__(self, pose_ckpt: str | os.PathLike, det_ckpt: str | os.PathLike, device: str = "cpu") -> None:
        try:
            from mmdet.apis import init_detector
            from mmengine.config import Config
            from mmpose.apis import init_model
            from mmpose.utils import adapt_mmdet_pipeline
        except ImportError as exc:
            raise InputError(MISSING_MMPOSE) from exc
        self.detector = init_detector(Config(_yolox_l_config()), None, device=device)
        _load_weights(self.detector, Path(det_ckpt), "--yolox_ckpt")
        self.detector.cfg = adapt_mmdet_pipeline(self.detector.cfg)
        self.pose_model = init_model(Config(_dwpose_l_config()), None, device=device)
        _load_weights(self.pose_model, Path(pose_ckpt), "--dwpose_ckpt")

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from mmdet.apis import inference_detector
        from mmpose.apis import inference_topdown
        from mmpose.evaluation.functional import nms
        from mmpose.structures import merge_data_samples

        # Same channel swap as the official DWposeDetector (COLOR_RGB2BGR on a BGR frame).
        image_as_official = np.ascontiguousarray(image_bgr[:, :, ::-1])
        instances = inference_detector(self.detector, image_as_official).pred_instances.cpu().numpy()
        boxes = np.concatenate([instances.bboxes, instances.scores[:, None]], axis=1)
        boxes = boxes[(instances.labels == 0) & (instances.scores > DET_MIN_SCORE)]
        boxes = boxes[nms(boxes, DET_NMS_IOU), :4]
        # No box: mmpose then uses the whole image, as the official code relies on.
        results = inference_topdown(self.pose_model, image_as_official, boxes if len(boxes) else None)
        predictions = merge_data_samples(results).pred_instances
        keypoints = predictions.get("transformed_keypoints", predictions.keypoints)
        scores = predictions.keypoint_scores if "keypoint_scores" in predictions else np.ones(keypoints.shape[:-1])
        return coco_wholebody_to_openpose(np.asarray(keypoints), np.asarray(scores))
