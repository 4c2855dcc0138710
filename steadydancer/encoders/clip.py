"""CLIP ViT-H/14 vision tower of Wan 2.1 (open-clip XLM-RoBERTa-large ViT-huge-14).

The official file holds the vision tower (``visual.*``) and the text tower (``textual.*``);
only the vision tower is used, and only up to the output of its second-to-last block,
which is what the official ``CLIPModel.visual`` returns (``use_31_block``).

The network is transformers' ``CLIPVisionModel`` with one block fewer than the file:
the official tower is pre-norm (``pre_norm`` LayerNorm after the embeddings, no patch
bias), exact-erf GELU MLPs of ratio 4, LayerNorm eps 1e-5 and 1/sqrt(d) attention,
which is CLIP's layout; the fused ``to_qkv`` is split into q, k, v.

Architecture rule: width, depth, MLP width and patch size come from the tensors' shapes,
the image size from the position table (tokens - 1 = (image / patch)^2). The head count
cannot be read from shapes; it comes from ``arch.json`` beside the file (``vision_heads``)
when present, else the release value 16.
"""

from __future__ import annotations

import math
import os
import re as _re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import InputError
from ._common import assign_state_dict, load_official_state_dict, read_arch_json, require_keys

RELEASE_VISION_HEADS = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LAYER_NORM_EPS = 1e-5


def clip_arch_from_state(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict:
    """Vision-tower constructor numbers: shapes first, then arch.json, then release constants."""
    require_keys(state, ["visual.patch_embedding.weight", "visual.pos_embedding", "visual.cls_embedding",
                         "visual.pre_norm.weight", "visual.transformer.0.attn.to_qkv.weight",
                         "visual.transformer.0.mlp.0.weight"], path, "CLIP")
    if "visual.patch_embedding.bias" in state:
        raise InputError(f"{path}: CLIP vision tower without pre-norm is not supported (Wan uses pre-norm)")
    dim, _, patch, patch_w = state["visual.patch_embedding.weight"].shape
    tokens = state["visual.pos_embedding"].shape[1]
    grid = math.isqrt(tokens - 1)
    if patch != patch_w or grid * grid != tokens - 1:
        raise InputError(f"{path}: CLIP patch embedding {patch}x{patch_w} / {tokens} positions "
                         "do not describe a square image with a class token")
    layer_ids = {int(m.group(1)) for k in state if (m := _re.match(r"visual\.transformer\.(\d+)\.", k))}
    num_layers = max(layer_ids) + 1
    arch_json = read_arch_json(path)
    num_heads = int(arch_json.get("vision_heads", RELEASE_VISION_HEADS))
    if dim % num_heads:
        raise InputError(f"{path}: CLIP width {dim} is not divisible by {num_heads} heads "
                         "(give vision_heads in an arch.json beside the file)")
    image_size = grid * patch
    if "image_size" in arch_json and int(arch_json["image_size"]) != image_size:
        raise InputError(f"{path}: arch.json image_size {arch_json['image_size']} does not match the "
                         f"position table ({grid}x{grid} patches of {patch})")
    return dict(dim=int(dim), patch_size=int(patch), image_size=int(image_size), num_layers=num_layers,
                num_heads=num_heads, mlp_dim=int(state["visual.transformer.0.mlp.0.weight"].shape[0]))


def _to_transformers_names(state: dict[str, torch.Tensor], used_layers: int, prefix: str) -> dict:
    """Official ``visual.*`` tensors of the first ``used_layers`` blocks, renamed for CLIPVisionModel."""
    out = {
        f"{prefix}embeddings.class_embedding": state["visual.cls_embedding"].reshape(-1),
        f"{prefix}embeddings.patch_embedding.weight": state["visual.patch_embedding.weight"],
        f"{prefix}embeddings.position_embedding.weight": state["visual.pos_embedding"][0],
        f"{prefix}pre_layrnorm.weight": state["visual.pre_norm.weight"],
        f"{prefix}pre_layrnorm.bias": state["visual.pre_norm.bias"],
        # post_layernorm only feeds the pooled output, which is not used; the file has it.
        f"{prefix}post_layernorm.weight": state["visual.post_norm.weight"],
        f"{prefix}post_layernorm.bias": state["visual.post_norm.bias"],
    }
    for i in range(used_layers):
        src, dst = f"visual.transformer.{i}.", f"{prefix}encoder.layers.{i}."
        q, k, v = state[src + "attn.to_qkv.weight"].chunk(3, dim=0)
        qb, kb, vb = state[src + "attn.to_qkv.bias"].chunk(3, dim=0)
        out.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
            dst + "self_attn.k_proj.weight": k, dst + "self_attn.k_proj.bias": kb,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
            dst + "self_attn.out_proj.weight": state[src + "attn.proj.weight"],
            dst + "self_attn.out_proj.bias": state[src + "attn.proj.bias"],
            dst + "layer_norm1.weight": state[src + "norm1.weight"],
            dst + "layer_norm1.bias": state[src + "norm1.bias"],
            dst + "layer_norm2.weight": state[src + "norm2.weight"],
            dst + "layer_norm2.bias": state[src + "norm2.bias"],
            dst + "mlp.fc1.weight": state[src + "mlp.0.weight"], dst + "mlp.fc1.bias": state[src + "mlp.0.bias"],
            dst + "mlp.fc2.weight": state[src + "mlp.2.weight"], dst + "mlp.fc2.bias": state[src + "mlp.2.bias"],
        })
    return out


class ClipVisionEncoder:
    """Images in [-1, 1] -> CLIP features of the second-to-last block, [B, 1 + (S/P)^2, C].

    With the release file: [B, 257, 1280]. ``dtype`` is the weight dtype; on CUDA with a
    half dtype the forward runs under autocast as the official code does (LayerNorms and
    softmax in float32).
    """

    def __init__(self, checkpoint_path: str | os.PathLike, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float16) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.checkpoint_path = Path(checkpoint_path)
        self.device = torch.device(device)
        self.dtype = dtype
        state = load_official_state_dict(self.checkpoint_path, "CLIP")
        self.arch = arch = clip_arch_from_state(state, self.checkpoint_path)
        if arch["num_layers"] < 2:
            raise InputError(f"{self.checkpoint_path}: CLIP vision tower needs at least 2 blocks")
        used_layers = arch["num_layers"] - 1  # the official output skips the last block
        config = CLIPVisionConfig(
            hidden_size=arch["dim"], intermediate_size=arch["mlp_dim"], num_hidden_layers=used_layers,
            num_attention_heads=arch["num_heads"], image_size=arch["image_size"],
            patch_size=arch["patch_size"], num_channels=3, hidden_act="gelu", layer_norm_eps=_LAYER_NORM_EPS,
            attention_dropout=0.0)
        with torch.device("meta"):
            model = CLIPVisionModel(config)
        names = list(model.state_dict())
        prefix = next(n for n in names if n.endswith("embeddings.class_embedding"))[:-len("embeddings.class_embedding")]
        assign_state_dict(model, _to_transformers_names(state, used_layers, prefix), self.device, dtype,
                          self.checkpoint_path, "CLIP vision")
        del state
        # Non-persistent buffers were left on the meta device; recreate them.
        for module in model.modules():
            if hasattr(module, "position_ids") and module.position_ids.is_meta:
                count = module.position_ids.shape[-1]
                module.register_buffer("position_ids", torch.arange(count, device=self.device)[None],
                                       persistent=False)
        self.model = model.eval().requires_grad_(False)
        self.image_size = arch["image_size"]

    def to(self, device: torch.device | str) -> "ClipVisionEncoder":
        """Move the weights; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> bicubic to image_size, [0, 1], CLIP mean/std; float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        size = (self.image_size, self.image_size)
        x = F.interpolate(images.float().to(self.device), size=size, mode="bicubic", align_corners=False)
        x = x * 0.5 + 0.5
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, tokens, C] (release: [B, 257, 1280])."""
        pixels = self.preprocess(images)
        use_autocast = self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast("cuda", dtype=self.dtype, enabled=use_autocast):
            return self.model(pixel_values=pixels.to(self.dtype)).last_hidden_state
