"""Parity of the CLIP vision tower: image in [-1, 1] -> features of every block but the last."""

from __future__ import annotations

from pathlib import Path

import torch

from . import relative_error
from .t5 import check_arch_json


def run_case(case_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Relative error of ``features`` [B, tokens, C] of a clip case folder (official: float32)."""
    from safetensors.torch import load_file

    from ..encoders.clip import ClipVisionEncoder

    case_dir = Path(case_dir)
    checkpoint = next(case_dir.glob("models_clip*.pth"))
    io = load_file(case_dir / "io.safetensors")
    encoder = ClipVisionEncoder(checkpoint, device=device, dtype=dtype)
    arch = encoder.arch
    check_arch_json(case_dir, {"vision_dim": arch["dim"], "vision_layers": arch["num_layers"],
                               "patch_size": arch["patch_size"], "image_size": arch["image_size"],
                               "vision_mlp_ratio": arch["mlp_dim"] // arch["dim"]})
    image = io["image"]
    # The pipeline passes [3, 1, H, W] (channels, one frame); the encoder takes [B, 3, H, W].
    if image.ndim == 4 and image.shape[0] == 3 and image.shape[1] != 3:
        image = image.transpose(0, 1)
    images = image
    return {"features": relative_error(encoder.encode(images.to(device)).float().cpu(), io["features"])}
