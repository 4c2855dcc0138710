"""DreamSim (Fu et al. 2023), the "ensemble" model VBench-I2V's I2V background uses, from DreamSim's
own files: DINO ViT-B/16 (``dino_vitbase16_pretrain.pth``), CLIP and OpenCLIP ViT-B/16 converted to
DINO's layout (``clip_vitb16_pretrain.pth.tar``, ``open_clip_vitb16_pretrain.pth.tar``, with their
``proj``) and the LoRA adapters ``ensemble_lora/`` (``adapter_config.json`` + ``adapter_model.bin``
or ``.safetensors``), merged into the ``qkv`` weights.

Embedding of images [N, 3, 224, 224] in [0, 1]: the concatenation of DINO's CLS token as the last
block leaves it (ImageNet normalisation), and the projected CLS tokens of the two CLIP towers (CLIP
normalisation), centred and scaled to unit norm (DreamSim's ``normalize_embeds``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ._loading import read_state_dict
from .vit import DinoViT, dino_vit_from_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# peft's saved names: base_model.model.extractor_list.<k>.model.blocks.<i>.attn.qkv.lora_<A|B>.weight
_LORA_KEY = re.compile(r"extractor_list\.(\d+)\.model\.blocks\.(\d+)\.attn\.qkv\.lora_([AB])(?:\.[A-Za-z_]+)?\.weight$")


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)


class DreamSim(nn.Module):
    """Images [N, 3, 224, 224] in [0, 1] -> embeddings [N, 768 + 512 + 512] (unit norm, zero mean)."""

    def __init__(self, dino: DinoViT, clip: DinoViT, clip_proj: torch.Tensor, open_clip: DinoViT,
                 open_clip_proj: torch.Tensor) -> None:
        super().__init__()
        self.dino, self.clip, self.open_clip = dino, clip, open_clip
        self.register_buffer("clip_proj", clip_proj.float())
        self.register_buffer("open_clip_proj", open_clip_proj.float())

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        parts = [self.dino(_normalise(x, IMAGENET_MEAN, IMAGENET_STD), final_norm=False),
                 self.clip(_normalise(x, CLIP_MEAN, CLIP_STD)) @ self.clip_proj,
                 self.open_clip(_normalise(x, CLIP_MEAN, CLIP_STD)) @ self.open_clip_proj]
        embed = torch.cat(parts, dim=-1)
        embed = embed - embed.mean(dim=1, keepdim=True)
        return embed / embed.norm(dim=1, keepdim=True)


def merge_lora(models: list[DinoViT], lora_dir: str | os.PathLike) -> None:
    """Add the LoRA deltas (lora_alpha / r) * B @ A of ``lora_dir`` to the ``qkv`` weights of the
    three backbones (extractor 0: DINO, 1: CLIP, 2: OpenCLIP)."""
    lora_dir = Path(lora_dir)
    try:
        config = json.loads((lora_dir / "adapter_config.json").read_text())
        scale = float(config["lora_alpha"]) / float(config["r"])
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        raise InputError(f"{lora_dir}/adapter_config.json: not a LoRA adapter config ({exc})") from None
    if config.get("use_rslora"):
        raise InputError(f"{lora_dir}: rank-stabilised LoRA is not what DreamSim ships")
    weights = next((lora_dir / n for n in ("adapter_model.safetensors", "adapter_model.bin")
                    if (lora_dir / n).is_file()), None)
    if weights is None:
        raise InputError(f"{lora_dir}: no adapter_model.safetensors or adapter_model.bin")
    pairs: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for name, tensor in read_state_dict(weights, "DreamSim LoRA").items():
        match = _LORA_KEY.search(name)
        if match:
            pairs.setdefault((int(match[1]), int(match[2])), {})[match[3]] = tensor.float()
    if not pairs:
        raise InputError(f"{weights}: no qkv LoRA tensors (…extractor_list.K.model.blocks.I.attn.qkv.lora_A/B.weight)")
    for (k, i), ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"} or k >= len(models) or i >= len(models[k].blocks):
            raise InputError(f"{weights}: LoRA for extractor {k} block {i} does not fit the three ViT-B/16 models")
        qkv = models[k].blocks[i].attn.qkv.weight
        qkv.data += scale * (ab["B"] @ ab["A"]).to(qkv)


def load_dreamsim(dino_path: str | os.PathLike, clip_path: str | os.PathLike, open_clip_path: str | os.PathLike,
                  lora_dir: str | os.PathLike, device: torch.device | str = "cpu") -> DreamSim:
    """The DreamSim ensemble from its files (see the module docstring)."""
    dino = dino_vit_from_state(read_state_dict(dino_path, "DINO ViT"), dino_path)
    towers = []
    for path, what, quick_gelu in ((clip_path, "DreamSim CLIP ViT-B/16", True),
                                   (open_clip_path, "DreamSim OpenCLIP ViT-B/16", False)):
        state = read_state_dict(path, what)
        if "proj" not in state:
            raise InputError(f"{path}: no 'proj' tensor (expected DreamSim's {what} file)")
        proj = state.pop("proj")
        # DreamSim runs the CLIP towers with LayerNorm eps 1e-5 (CLIP's), OpenAI's with QuickGELU
        towers.append((dino_vit_from_state(state, path, what, eps=1e-5, quick_gelu=quick_gelu), proj))
    merge_lora([dino, towers[0][0], towers[1][0]], lora_dir)
    return DreamSim(dino, towers[0][0], towers[0][1], towers[1][0], towers[1][1]).eval().to(device)
