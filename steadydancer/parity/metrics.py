"""Parity of the evaluation metrics (``shared/parity/metrics``): one ``meta.json`` ``kind`` per case.

Kinds: ssim_psnr, lpips, fid_inception, frechet, temporal_flickering. Each returns the relative
error of every output the case holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import relative_error

METRIC_KINDS = ("lpips", "fid_inception", "frechet", "ssim_psnr", "temporal_flickering")


def metric_kind(case_dir: Path) -> str | None:
    """The case's metric kind from ``meta.json``, or None for other cases."""
    meta = Path(case_dir) / "meta.json"
    if not meta.is_file():
        return None
    try:
        kind = json.loads(meta.read_text()).get("kind")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return kind if kind in METRIC_KINDS else None


def run_case(case_dir: Path, kind: str, device: torch.device | str = "cpu") -> dict[str, float]:
    """Relative error of each output of a metric case (reference: the lpips / pytorch-fid / VBench code)."""
    from safetensors.torch import load_file

    from ..eval import metrics

    case_dir = Path(case_dir)
    io = load_file(case_dir / "io.safetensors")
    if kind == "ssim_psnr":
        return {"ssim": relative_error(metrics.ssim(io["a"], io["b"]), io["ssim"]),
                "psnr": relative_error(metrics.psnr(io["a"], io["b"]), io["psnr"])}
    if kind == "frechet":
        fd = metrics.frechet_distance_of_features(io["feats_a"].numpy(), io["feats_b"].numpy())
        return {"fd": relative_error(torch.tensor([fd]), io["fd"].reshape(-1))}
    if kind == "temporal_flickering":
        score = metrics.temporal_flickering(io["frames"].numpy())
        return {"score": relative_error(torch.tensor([score]), io["score"].reshape(-1))}
    if kind == "lpips":
        from ..eval.lpips import load_lpips

        vgg = _one(case_dir, ("vgg16*.pth",), "VGG16")
        lin = _one(case_dir, ("vgg_v0.1.pth", "vgg.pth", "*v0.1*.pth"), "LPIPS linear layers")
        model = load_lpips(vgg, lin, device=device)
        out = {"lpips": relative_error(model(io["x0"].to(device), io["x1"].to(device)).cpu(), io["lpips"])}
        if "lpips_01" in io:
            ours = model(io["x0_01"].to(device), io["x1_01"].to(device), input_range="01").cpu()
            out["lpips_01"] = relative_error(ours, io["lpips_01"])
        return out
    if kind == "fid_inception":
        from ..eval.inception import load_fid_inception

        model = load_fid_inception(_one(case_dir, ("pt_inception*.pth",), "FID Inception"), device=device)
        return {"features": relative_error(model(io["images"].to(device)).cpu(), io["features"])}
    raise ValueError(f"unknown metric kind {kind!r}")


def _one(case_dir: Path, patterns: tuple[str, ...], what: str) -> Path:
    for pattern in patterns:
        found = sorted(case_dir.glob(pattern))
        if found:
            return found[0]
    raise ValueError(f"{case_dir}: no {what} file ({' or '.join(patterns)})")



