"""The two ViT families VBench uses, from their released weight files, in plain torch.

- DINO ViT-B/16 (``dino_vitbase16_pretrain.pth``, facebookresearch/dino key names): the CLS token
  after the final norm, position embeddings interpolated bicubically to the frame's patch grid
  as DINO does (so frames need not be square).
- OpenAI CLIP image tower (``ViT-B-32.pt``, ``ViT-L-14.pt``: TorchScript archives, read for their
  ``visual.*`` tensors): ``encode_image``, the projected CLS token.

Sizes (width, depth, patch, grid) are read from the tensors; heads are width / 64, as in both
releases.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ._loading import load_into, read_state_dict


class _DinoAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _DinoMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, quick_gelu: bool = False) -> None:
        super().__init__()
        self.quick_gelu = quick_gelu
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x) if self.quick_gelu else F.gelu(x))


class _DinoBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-6, quick_gelu: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _DinoAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _DinoMlp(dim, hidden, quick_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)


class DinoViT(nn.Module):
    """Normalised frames [N, 3, H, W] -> CLS features [N, dim] (DINO's ``forward``).

    ``pre_norm``, ``eps`` and ``quick_gelu`` describe CLIP towers stored in DINO's layout (DreamSim's
    converted files: a LayerNorm named ``pos_drop`` after the position embeddings, eps 1e-5, QuickGELU)."""

    def __init__(self, dim: int, depth: int, patch: int, num_positions: int, hidden: int,
                 eps: float = 1e-6, quick_gelu: bool = False, pre_norm: bool = False) -> None:
        super().__init__()
        self.patch = patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, dim))
        self.patch_embed = _PatchEmbed(dim, patch)
        if pre_norm:
            self.pos_drop = nn.LayerNorm(dim, eps=eps)
        self.blocks = nn.ModuleList(_DinoBlock(dim, max(1, dim // 64), hidden, eps, quick_gelu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def _positions(self, grid_h: int, grid_w: int, pixels_h: int, pixels_w: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(n))
        # DINO's interpolate_pos_encoding skips only for square *pixel* sizes with the trained patch count:
        # a 224x230 frame (a square 14x14 grid) still goes through the (not quite identity) interpolation
        if grid_h * grid_w == n and pixels_h == pixels_w:
            return self.pos_embed
        patch_pos = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # DINO's scale factors carry +0.1 so that the floor of the output size is the grid
        patch_pos = F.interpolate(patch_pos, scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
                                  mode="bicubic")
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise ValueError(f"position grid {tuple(patch_pos.shape[-2:])} != {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """CLS token after the final norm, or (``final_norm=False``) as the last block leaves it."""
        h, w = x.shape[-2:]
        tokens = self.patch_embed.proj(x.float()).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self._positions(h // self.patch, w // self.patch, h, w)
        if hasattr(self, "pos_drop"):
            tokens = self.pos_drop(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0] if final_norm else tokens[:, 0]


def dino_vit_from_state(state: dict[str, torch.Tensor], path: str | os.PathLike, what: str = "DINO ViT",
                        eps: float = 1e-6, quick_gelu: bool = False) -> DinoViT:
    """A :class:`DinoViT` sized from tensors in DINO's layout (a ``pos_drop.*`` LayerNorm is kept when present)."""
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    if any(k not in state for k in needed):
        raise InputError(f"{path}: not a {what} checkpoint in DINO's layout (needs {', '.join(needed)})")
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    weight = state["patch_embed.proj.weight"]
    model = DinoViT(dim=weight.shape[0], depth=depth, patch=weight.shape[-1],
                    num_positions=state["pos_embed"].shape[1], hidden=state["blocks.0.mlp.fc1.weight"].shape[0],
                    eps=eps, quick_gelu=quick_gelu, pre_norm="pos_drop.weight" in state)
    return load_into(model, state, path, what, ignore_prefixes=("head.",))


def load_dino_vit(path: str | os.PathLike, device: torch.device | str = "cpu") -> DinoViT:
    """DINO ViT from facebookresearch/dino's checkpoint layout (``dino_vitbase16_pretrain.pth``)."""
    return dino_vit_from_state(read_state_dict(path, "DINO ViT"), path).to(device)


class _ClipBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, width * 4), "c_proj": nn.Linear(width * 4, width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        y = self.mlp["c_fc"](self.ln_2(x))
        return x + self.mlp["c_proj"](y * torch.sigmoid(1.702 * y))  # QuickGELU, as OpenAI CLIP


class _ClipTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ClipBlock(width, heads) for _ in range(layers))


class ClipImageEncoder(nn.Module):
    """CLIP-normalised images [N, 3, S, S] (S = the training size) -> image embeddings [N, embed]."""

    def __init__(self, width: int, layers: int, patch: int, grid: int, embed_dim: int) -> None:
        super().__init__()
        self.input_size = grid * patch
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _ClipTransformer(width, layers, max(1, width // 64))
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv1(x.float()).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(tokens.shape[0], 1, -1)
        tokens = self.ln_pre(torch.cat([cls, tokens], dim=1) + self.positional_embedding)
        for block in self.transformer.resblocks:
            tokens = block(tokens)
        return self.ln_post(tokens[:, 0]) @ self.proj



def load_clip_image_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> ClipImageEncoder:
    """CLIP image tower from OpenAI's ``ViT-*.pt`` (TorchScript or plain state dict, ``visual.*``)."""
    state = read_state_dict(path, "CLIP")
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in visual or "proj" not in visual:
        raise InputError(f"{path}: not an OpenAI CLIP ViT file (no visual.conv1.weight / visual.proj)")
    width, _, patch, _ = visual["conv1.weight"].shape
    grid = int(round(math.sqrt(visual["positional_embedding"].shape[0] - 1)))
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    model = ClipImageEncoder(width, layers, patch, grid, visual["proj"].shape[1])
    load_into(model, visual, path, "CLIP image tower")
    return model.to(device)


def load_aesthetic_head(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Linear:
    """The LAION aesthetic predictor's linear head (``sa_0_4_vit_l_14_linear.pth``: weight [1, 768], bias [1])."""
    state = read_state_dict(path, "LAION aesthetic head")
    if set(state) != {"weight", "bias"} or state["weight"].shape[0] != 1:
        raise InputError(f"{path}: not the LAION aesthetic linear head (expected weight [1, D] and bias [1])")
    head = nn.Linear(state["weight"].shape[1], 1)
    load_into(head, state, path, "LAION aesthetic head")
    return head.to(device)
