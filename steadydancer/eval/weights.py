"""The weight file each evaluation network loads, found in ``--weights`` by its usual name.

Nothing is downloaded: a missing file skips the metrics that need it, with one line naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFile:
    key: str
    names: tuple[str, ...]  # first: the released file name; others: names it also goes by
    what: str
    source: str


WEIGHT_FILES: dict[str, WeightFile] = {w.key: w for w in (
    WeightFile("fid_inception", ("pt_inception-2015-12-05-6726825d.pth", "pt_inception.pth"),
               "FID Inception v3 (pool3)", "github.com/mseitzer/pytorch-fid releases"),
    WeightFile("vgg16", ("vgg16-397923af.pth", "vgg16.pth"), "VGG16 for LPIPS", "torchvision vgg16 IMAGENET1K_V1"),
    WeightFile("lpips_vgg", ("vgg.pth", "vgg_v0.1.pth"), "LPIPS v0.1 linear layers (VGG)",
               "github.com/richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth"),
    WeightFile("i3d", ("i3d_torchscript.pt",), "I3D (Kinetics-400) for FVD, TorchScript",
               "StyleGAN-V (universome/stylegan-v) FVD detector"),
    WeightFile("dino_vitb16", ("dino_vitbase16_pretrain.pth",), "DINO ViT-B/16",
               "facebookresearch/dino (dl.fbaipublicfiles.com/dino)"),
    WeightFile("clip_vitb32", ("ViT-B-32.pt",), "OpenAI CLIP ViT-B/32", "openai/CLIP"),
    WeightFile("clip_vitl14", ("ViT-L-14.pt",), "OpenAI CLIP ViT-L/14", "openai/CLIP"),
    WeightFile("dreamsim_clip", ("clip_vitb16_pretrain.pth.tar",), "DreamSim's CLIP ViT-B/16 (DINO layout)",
               "DreamSim v0.2 ensemble checkpoint zip (ssundaram21/dreamsim)"),
    WeightFile("dreamsim_open_clip", ("open_clip_vitb16_pretrain.pth.tar",), "DreamSim's OpenCLIP ViT-B/16 (DINO layout)",
               "DreamSim v0.2 ensemble checkpoint zip"),
    WeightFile("dreamsim_lora", ("ensemble_lora/adapter_config.json",), "DreamSim ensemble LoRA adapters (folder)",
               "DreamSim v0.2 ensemble checkpoint zip"),
    WeightFile("musiq_spaq", ("musiq_spaq_ckpt-358bb6af.pth",), "MUSIQ (SPAQ) for imaging quality",
               "chaofengc/IQA-PyTorch (pyiqa) v0.1-weights release"),
    WeightFile("amt_s", ("amt-s.pth",), "AMT-S frame interpolation for motion smoothness",
               "MCG-NKU/AMT (huggingface.co/lalala125/AMT)"),
    WeightFile("aesthetic_head", ("sa_0_4_vit_l_14_linear.pth",), "LAION aesthetic linear head",
               "LAION-AI/aesthetic-predictor"),
)}


def find_weight(weights_dir: str | os.PathLike | None, key: str) -> Path | None:
    """The file for ``key`` in ``weights_dir`` (or one folder below it), None when absent."""
    if weights_dir is None:
        return None
    root = Path(weights_dir)
    for name in WEIGHT_FILES[key].names:
        for candidate in (root / name, *sorted(root.glob(f"*/{name}"))):
            if candidate.is_file():
                return candidate
    return None


def missing_reason(key: str, weights_dir: str | os.PathLike | None) -> str:
    """Why a metric is skipped: which file it needs and where it was looked for."""
    spec = WEIGHT_FILES[key]
    where = weights_dir if weights_dir is not None else "--weights (not given)"
    return f"{spec.names[0]} ({spec.what}) not found in {where}"
