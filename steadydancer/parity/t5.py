"""Parity of the umT5 encoder: official ids/mask -> hidden states, float32 compute from bf16 weights."""

from __future__ import annotations

from pathlib import Path

import torch

from . import relative_error


def run_case(case_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Relative errors of ``hidden`` [B, L, C] and ``hidden_trimmed`` [n, C] of a t5 case folder."""
    from safetensors.torch import load_file

    from ..encoders.t5 import TextEncoder

    case_dir = Path(case_dir)
    checkpoint = next(case_dir.glob("models_t5*.pth"))
    io = load_file(case_dir / "io.safetensors")
    encoder = TextEncoder(checkpoint, None, device=device, dtype=dtype)
    check_arch_json(case_dir, encoder.arch)
    hidden = encoder.encode_ids(io["ids"].to(device), io["mask"].to(device)).float().cpu()
    lengths = io["mask"].gt(0).sum(dim=1).tolist()
    # What the pipeline keeps: each sample's real tokens (one sample in the shared cases).
    trimmed = torch.cat([h[:n] for h, n in zip(hidden, lengths)])
    return {"hidden": relative_error(hidden, io["hidden"]),
            "hidden_trimmed": relative_error(trimmed, io["hidden_trimmed"])}


def check_arch_json(case_dir: Path, arch: dict) -> None:
    """The numbers read from the tensors' shapes must equal the case's arch.json, where it gives them."""
    import json

    path = Path(case_dir) / "arch.json"
    if not path.is_file():
        return
    given = json.loads(path.read_text())
    wrong = {k: (v, given[k]) for k, v in arch.items() if k in given and given[k] != v}
    if wrong:
        raise ValueError(f"{path}: architecture read from the weights differs (ours, arch.json): {wrong}")
