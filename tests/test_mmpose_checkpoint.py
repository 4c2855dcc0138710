"""The DWPose / YOLOX .pth files as mmengine writes them: read without mmengine (no code from the
file runs), loaded strictly (issue 14 failure 6). mmpose itself is not needed for these tests."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from steadydancer.errors import InputError
from steadydancer.pose.detect.mmpose_backend import load_strict, read_mm_checkpoint


class _FakeHistoryBuffer:
    """Pickled under mmengine's name, as the real class is (mmengine/logging/history_buffer.py)."""

    def __init__(self) -> None:
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])
        self.max_length = 1000000


def write_mmengine_checkpoint(path, state: dict) -> None:
    """torch.save of an mmengine runner checkpoint: state_dict plus meta with the MessageHub's
    HistoryBuffer objects and numpy dataset metadata."""
    module = types.ModuleType("mmengine.logging.history_buffer")
    module.HistoryBuffer = _FakeHistoryBuffer
    _FakeHistoryBuffer.__module__, _FakeHistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    saved = {name: sys.modules.get(name) for name in ("mmengine", "mmengine.logging", module.__name__)}
    sys.modules.update({"mmengine": types.ModuleType("mmengine"), "mmengine.logging": types.ModuleType("x"),
                        module.__name__: module})
    try:
        torch.save({"meta": {"mmengine_version": "0.10.4", "epoch": 270,
                             "message_hub": {"log_scalars": {"train/loss": _FakeHistoryBuffer()}},
                             "dataset_meta": {"sigmas": np.array([0.026, 0.025], dtype=np.float32)}},
                    "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


def test_mmengine_checkpoint_is_read_without_mmengine(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / "dw-ll_ucoco_384.pth"
    write_mmengine_checkpoint(path, model.state_dict())
    assert "mmengine" not in sys.modules
    with pytest.raises(Exception, match="HistoryBuffer"):        # what plain weights_only loading does
        torch.load(os.fspath(path), weights_only=True)
    state = read_mm_checkpoint(path, "--dwpose_ckpt")
    assert set(state) == set(model.state_dict())
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_strict(fresh, state, path, "--dwpose_ckpt")
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_a_checkpoint_that_pickles_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": Evil()}, path)
    with pytest.raises(InputError, match=r"--yolox_ckpt: .*evil\.pth is not a plain mmengine/mmcv checkpoint"):
        read_mm_checkpoint(path, "--yolox_ckpt")
    assert not (tmp_path / "owned").exists()


def test_strict_loading_names_every_kind_of_mismatch_in_one_line(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = dict(model.state_dict())
    state.pop("1.bias")
    state["0.weight"] = torch.zeros(5, 3)
    state["head.extra"] = torch.zeros(1)
    before = model[0].weight.clone()
    with pytest.raises(InputError) as error:
        load_strict(model, state, tmp_path / "yolox_l.pth", "--yolox_ckpt")
    line = str(error.value)
    assert "\n" not in line and "missing 1.bias" in line and "unexpected head.extra" in line
    assert "shape 0.weight (5, 3) vs (4, 3)" in line
    assert torch.equal(model[0].weight, before)


def test_yolox_ema_buffers_are_skipped_as_mmdet_does(tmp_path) -> None:
    """mmdet 2.x YOLOX checkpoints carry ema_<name> copies (mmdetection #6156, #7936)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state = dict(model.state_dict())
    state.update({"ema_" + k.replace(".", "_"): torch.full_like(v, 7) for k, v in model.state_dict().items()})
    path = tmp_path / "yolox_l.pth"
    write_mmengine_checkpoint(path, state)
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_strict(fresh, read_mm_checkpoint(path, "--yolox_ckpt"), path, "--yolox_ckpt")
    assert torch.equal(fresh[0].weight, model[0].weight)            # the model's tensors, not the EMA's
    # an ema_ name that shadows no model tensor is still refused
    state["ema_head_extra"] = torch.zeros(1)
    with pytest.raises(InputError, match="unexpected ema_head_extra"):
        load_strict(fresh, state, path, "--yolox_ckpt")
