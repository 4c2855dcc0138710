"""CLIP vision tower: official parity cases, architecture rule, file errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import parity_cases
from steadydancer.encoders.clip import ClipVisionEncoder
from steadydancer.errors import InputError

CASES = parity_cases("clip")


@pytest.mark.parametrize("case", CASES or [pytest.param(None, marks=pytest.mark.skip("no clip parity case"))])
def test_clip_parity(case):
    from steadydancer.parity.clip import run_case

    errors = run_case(case)
    assert set(errors) == {"features"}
    assert errors["features"] < 1e-4, errors


def test_heads_from_arch_json_else_release(tmp_path):
    from steadydancer.encoders.tiny import write_tiny_clip

    path = write_tiny_clip(tmp_path / "clip.pth", vision_dim=32, vision_layers=3, image_size=28)
    encoder = ClipVisionEncoder(path, dtype=torch.float32)
    assert encoder.arch == dict(dim=32, patch_size=14, image_size=28, num_layers=3, num_heads=16, mlp_dim=128)
    features16 = encoder.encode(torch.zeros(1, 3, 30, 30))
    assert features16.shape == (1, 5, 32)

    (tmp_path / "arch.json").write_text(json.dumps({"vision_heads": 2, "image_size": 28}))
    encoder2 = ClipVisionEncoder(path, dtype=torch.float32)
    assert encoder2.arch["num_heads"] == 2
    # a different head split changes the attention, so the features must differ
    assert not torch.allclose(encoder2.encode(torch.zeros(1, 3, 30, 30)), features16)

    (tmp_path / "arch.json").write_text(json.dumps({"image_size": 42}))
    with pytest.raises(InputError, match="image_size"):
        ClipVisionEncoder(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(InputError, match="models_clip_x.pth"):
        ClipVisionEncoder(tmp_path / "models_clip_x.pth")


def test_t5_file_given_as_clip_names_the_file(tmp_path):
    from steadydancer.encoders.tiny import write_tiny_t5

    path = write_tiny_t5(tmp_path / "swapped.pth")
    with pytest.raises(InputError, match="swapped.pth"):
        ClipVisionEncoder(path)
