"""Parity of the CLIP vision tower: image in [-1, 1] -> features of every block but the last."""

from __future__ import annotations

from pathlib import Path

import torch

from . import relative_error


def run_case(case_dir: Path) -> dict[str, float]:
    """Relative error of ``features`` [B, tokens, C] of a clip case folder (float32)."""
    from safetensors.torch import load_file

    from ..encoders.clip import ClipVisionEncoder

    case_dir = Path(case_dir)
    checkpoint = next(case_dir.glob("models_clip*.pth"))
    io = load_file(case_dir / "io.safetensors")
    encoder = ClipVisionEncoder(checkpoint, device="cpu", dtype=torch.float32)
    image = io["image"]
    # The pipeline passes [3, 1, H, W] (one frame); the encoder takes [B, 3, H, W].
    images = image.transpose(0, 1) if image.ndim == 4 and image.shape[0] == 3 else image
    return {"features": relative_error(encoder.encode(images), io["features"])}
