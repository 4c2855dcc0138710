"""Parity of the umT5 encoder: official ids/mask -> hidden states, float32 compute from bf16 weights."""

from __future__ import annotations

from pathlib import Path

import torch

from . import relative_error


def run_case(case_dir: Path) -> dict[str, float]:
    """Relative errors of ``hidden`` [B, L, C] and ``hidden_trimmed`` [n, C] of a t5 case folder."""
    from safetensors.torch import load_file

    from ..encoders.t5 import TextEncoder

    case_dir = Path(case_dir)
    checkpoint = next(case_dir.glob("models_t5*.pth"))
    io = load_file(case_dir / "io.safetensors")
    encoder = TextEncoder(checkpoint, None, device="cpu", dtype=torch.float32)
    hidden = encoder.encode_ids(io["ids"], io["mask"])
    length = int(io["mask"][0].gt(0).sum())
    return {"hidden": relative_error(hidden, io["hidden"]),
            "hidden_trimmed": relative_error(hidden[0, :length], io["hidden_trimmed"])}
