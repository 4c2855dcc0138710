"""Parity of the Wan 2.1 VAE: normalised encode of a video and clamped decode of a latent."""

from __future__ import annotations

from pathlib import Path

import torch

from . import relative_error
from .t5 import check_arch_json


def run_case(case_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Relative errors of ``encoded`` and ``decoded`` of a vae case folder (official: float32)."""
    from safetensors.torch import load_file

    from ..encoders.vae import WanVAE

    case_dir = Path(case_dir)
    checkpoint = next(case_dir.glob("*VAE*.pth"))
    io = load_file(case_dir / "io.safetensors")
    vae = WanVAE(checkpoint, device=device, dtype=dtype)
    check_arch_json(case_dir, vae.arch)
    return {"encoded": relative_error(vae.encode(io["video"].to(device)).cpu(), io["encoded"]),
            "decoded": relative_error(vae.decode(io["latent"].to(device)).cpu(), io["decoded"])}
