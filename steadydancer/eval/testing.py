"""Tiny random weight files in the standard files' key layouts, for tests and dry runs.

Each writer saves a file under the name :mod:`.weights` looks for, with the released file's tensor
names (and, for CLIP, the text tower's too, which we ignore) but small widths, so that every
metric path runs in seconds on a CPU. The numbers they produce mean nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .lpips import VGG16_STAGES


def _rand(*shape: int, generator: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def write_vgg16(path: Path, widths=(8, 8, 8, 8, 8), seed: int = 0) -> Path:
    """torchvision ``vgg16`` layout: ``features.N.weight/bias`` and ``classifier.*``."""
    g = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for stage, width in zip(VGG16_STAGES, widths):
        for index in stage:
            state[f"features.{index}.weight"] = _rand(width, cin, 3, 3, generator=g, scale=0.3)
            state[f"features.{index}.bias"] = _rand(width, generator=g, scale=0.05)
            cin = width
    state["classifier.0.weight"] = _rand(16, cin * 49, generator=g)
    state["classifier.0.bias"] = _rand(16, generator=g)
    torch.save(state, path)
    return path


def write_lpips_lin(path: Path, widths=(8, 8, 8, 8, 8), seed: int = 1) -> Path:
    """LPIPS v0.1 layout: ``lin{k}.model.1.weight`` [1, C_k, 1, 1], non-negative as trained."""
    g = torch.Generator().manual_seed(seed)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, w, 1, 1, generator=g) for k, w in enumerate(widths)}, path)
    return path


def write_dino(path: Path, dim: int = 32, depth: int = 2, patch: int = 16, grid: int = 14, seed: int = 2) -> Path:
    """facebookresearch/dino ViT layout (``dino_vitbase16_pretrain.pth`` names)."""
    g = torch.Generator().manual_seed(seed)
    state = {"cls_token": _rand(1, 1, dim, generator=g), "pos_embed": _rand(1, grid * grid + 1, dim, generator=g),
             "patch_embed.proj.weight": _rand(dim, 3, patch, patch, generator=g, scale=0.02),
             "patch_embed.proj.bias": _rand(dim, generator=g)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + _rand(dim, generator=g), b + "norm1.bias": _rand(dim, generator=g),
                      b + "attn.qkv.weight": _rand(3 * dim, dim, generator=g), b + "attn.qkv.bias": _rand(3 * dim, generator=g),
                      b + "attn.proj.weight": _rand(dim, dim, generator=g), b + "attn.proj.bias": _rand(dim, generator=g),
                      b + "norm2.weight": 1 + _rand(dim, generator=g), b + "norm2.bias": _rand(dim, generator=g),
                      b + "mlp.fc1.weight": _rand(4 * dim, dim, generator=g), b + "mlp.fc1.bias": _rand(4 * dim, generator=g),
                      b + "mlp.fc2.weight": _rand(dim, 4 * dim, generator=g), b + "mlp.fc2.bias": _rand(dim, generator=g)})
    state["norm.weight"] = 1 + _rand(dim, generator=g)
    state["norm.bias"] = _rand(dim, generator=g)
    torch.save(state, path)
    return path


def write_clip(path: Path, width: int = 32, layers: int = 2, patch: int = 32, grid: int = 7, embed: int = 16,
               seed: int = 3) -> Path:
    """OpenAI CLIP layout (``visual.*`` image tower plus text-tower tensors, which the image encoder ignores)."""
    g = torch.Generator().manual_seed(seed)
    state = {"visual.class_embedding": _rand(width, generator=g),
             "visual.positional_embedding": _rand(grid * grid + 1, width, generator=g),
             "visual.conv1.weight": _rand(width, 3, patch, patch, generator=g, scale=0.02),
             "visual.ln_pre.weight": 1 + _rand(width, generator=g), "visual.ln_pre.bias": _rand(width, generator=g),
             "visual.ln_post.weight": 1 + _rand(width, generator=g), "visual.ln_post.bias": _rand(width, generator=g),
             "visual.proj": _rand(width, embed, generator=g),
             "token_embedding.weight": _rand(10, embed, generator=g), "text_projection": _rand(embed, embed, generator=g),
             "logit_scale": torch.tensor(4.6)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}."
        state.update({b + "ln_1.weight": 1 + _rand(width, generator=g), b + "ln_1.bias": _rand(width, generator=g),
                      b + "attn.in_proj_weight": _rand(3 * width, width, generator=g),
                      b + "attn.in_proj_bias": _rand(3 * width, generator=g),
                      b + "attn.out_proj.weight": _rand(width, width, generator=g),
                      b + "attn.out_proj.bias": _rand(width, generator=g),
                      b + "ln_2.weight": 1 + _rand(width, generator=g), b + "ln_2.bias": _rand(width, generator=g),
                      b + "mlp.c_fc.weight": _rand(4 * width, width, generator=g), b + "mlp.c_fc.bias": _rand(4 * width, generator=g),
                      b + "mlp.c_proj.weight": _rand(width, 4 * width, generator=g), b + "mlp.c_proj.bias": _rand(width, generator=g)})
    torch.save(state, path)
    return path


def write_aesthetic_head(path: Path, embed: int = 16, seed: int = 4) -> Path:
    """LAION aesthetic head layout: ``weight`` [1, D], ``bias`` [1]."""
    g = torch.Generator().manual_seed(seed)
    torch.save({"weight": _rand(1, embed, generator=g, scale=1.0), "bias": torch.tensor([5.0])}, path)
    return path


def write_musiq(path: Path, hidden: int = 64, layers: int = 1, seed: int = 7) -> Path:
    """pyiqa MUSIQ layout (``musiq_spaq_ckpt-358bb6af.pth`` names): the real ResNet stem (64 channels),
    a narrow transformer."""
    from .musiq import MUSIQ

    g = torch.Generator().manual_seed(seed)
    shapes = MUSIQ(hidden=hidden, mlp_dim=2 * hidden, layers=layers).state_dict()
    state = {k: _rand(*v.shape, generator=g) + (1.0 if k.endswith(("gn_root.weight", "gn1.weight", "gn2.weight",
                                                                       "gn3.weight", "gn_proj.weight", "norm.weight",
                                                                       "norm1.weight", "norm2.weight")) else 0.0)
             for k, v in shapes.items()}
    torch.save(state, path)
    return path


def write_amt_s(path: Path, seed: int = 8) -> Path:
    """AMT-S layout (``amt-s.pth``: MCG-NKU/AMT module names under ``state_dict``); the architecture is
    fixed (3M parameters), the weights random and small."""
    from .amt import AMTS

    g = torch.Generator().manual_seed(seed)
    state = {k: _rand(*v.shape, generator=g, scale=0.05) for k, v in AMTS().state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def write_dreamsim(folder: Path, dim: int = 32, seed: int = 9) -> Path:
    """DreamSim's files: the CLIP/OpenCLIP ViT-B/16 in DINO's layout (with ``pos_drop`` LayerNorm and
    ``proj``, under ``state_dict``) and ``ensemble_lora/`` (peft adapter config + ``adapter_model.bin``).
    The DINO backbone is :func:`write_dino`'s file."""
    g = torch.Generator().manual_seed(seed)
    for k, name in enumerate(("clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar")):
        write_dino(folder / name, dim=dim, seed=seed + 1 + k)
        state = torch.load(folder / name, weights_only=True)
        state["pos_drop.weight"] = 1 + _rand(dim, generator=g)
        state["pos_drop.bias"] = _rand(dim, generator=g)
        state["proj"] = _rand(dim, 16, generator=g)
        torch.save({"state_dict": state}, folder / name)
    lora = folder / "ensemble_lora"
    lora.mkdir(parents=True, exist_ok=True)
    (lora / "adapter_config.json").write_text(
        '{"r": 4, "lora_alpha": 8, "lora_dropout": 0.3, "bias": "none", "target_modules": ["qkv"], "peft_type": "LORA"}')
    tensors = {}
    for k in range(3):
        for i in range(2):
            prefix = f"base_model.model.extractor_list.{k}.model.blocks.{i}.attn.qkv"
            tensors[f"{prefix}.lora_A.weight"] = _rand(4, dim, generator=g)
            tensors[f"{prefix}.lora_B.weight"] = _rand(3 * dim, 4, generator=g)
    torch.save(tensors, lora / "adapter_model.bin")
    return folder


class TinyI3D(nn.Module):
    """Stand-in with the I3D TorchScript's call signature: [B, 3, T, H, W] -> features [B, 8].

    ``rescale`` maps 0..255 to [-1, 1], ``resize`` resizes to 224x224 (trilinear), as the real detector."""

    def __init__(self, seed: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(6, 8, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        stats = torch.cat([x.mean(dim=(2, 3, 4)), motion], dim=1)
        return stats @ self.proj


def write_i3d(path: Path) -> Path:
    """A scripted :class:`TinyI3D` saved as TorchScript (the format of ``i3d_torchscript.pt``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of export; I3D ships as TorchScript
        torch.jit.save(torch.jit.script(TinyI3D()), str(path))
    return path


def write_tiny_weights(folder: str | os.PathLike, skip: tuple[str, ...] = ("fid_inception",)) -> Path:
    """Every evaluation weight file, tiny and random, under its usual name; keys in ``skip`` are left
    out (the FID Inception has a fixed 24M-parameter architecture, so none is written by default)."""
    from .weights import WEIGHT_FILES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writers = {"vgg16": write_vgg16, "lpips_vgg": write_lpips_lin, "i3d": write_i3d, "dino_vitb16": write_dino,
               "clip_vitb32": write_clip,
               "clip_vitl14": lambda p: write_clip(p, width=32, layers=1, patch=14, grid=16, embed=24, seed=6),
               "aesthetic_head": lambda p: write_aesthetic_head(p, embed=24), "musiq_spaq": write_musiq,
               "amt_s": write_amt_s, "dreamsim_lora": lambda p: write_dreamsim(p.parent.parent)}
    for key, writer in writers.items():
        if key not in skip:
            writer(folder / WEIGHT_FILES[key].names[0])
    # write_dreamsim wrote the two DreamSim towers beside the LoRA folder
    return folder
