"""MUSIQ (Ke et al. 2021), as pyiqa implements it, for VBench's imaging quality: SPAQ weights
``musiq_spaq_ckpt-358bb6af.pth`` (pyiqa's tensor names), one score per image (0..100 scale).

The image in [0, 1] is mapped to [-1, 1] and cut into 32x32 patches at three scales: resized
(bicubic, aspect kept, no antialias) to longer side 224 and 384 (each padded to ceil(L/32)^2 patches,
padding masked out), and the original resolution (all its patches). Each patch gets a hash-based
spatial embedding (its row and column mapped onto a 10x10 grid by nearest interpolation) and a
scale embedding; a weight-standardised ResNet stem turns each patch into a token; a transformer
with a CLS token and a linear head gives the score.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ._loading import load_into, read_state_dict

PATCH = 32
LONGER_SIDES = (224, 384)
HASH_GRID = 10


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding (the extra pixel goes to the bottom/right)."""
    h, w = x.shape[-2:]
    pad_h = (math.ceil(h / stride) - 1) * stride + kernel - h
    pad_w = (math.ceil(w / stride) - 1) * stride + kernel - w
    pad_h, pad_w = max(pad_h, 0), max(pad_w, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class StdConv(nn.Conv2d):
    """Convolution with weight standardisation (per output channel, unbiased std + 1e-5), SAME padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _same_pad(x, self.kernel_size[0], self.stride[0])
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = StdConv(cin, cin, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2 = StdConv(cin, cin, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3 = StdConv(cin, cout, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj = StdConv(cin, cout, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + identity)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        # pyiqa fills masked pairs with -1e3 (not -inf): padded tokens still attend among themselves
        pair_mask = mask[:, None, :, None] & mask[:, None, None, :]
        attn = attn.masked_fill(~pair_mask, -1e3).softmax(dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class _PositionEmbedding(nn.Module):
    def __init__(self, grid: int, dim: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))


class _ScaleEmbedding(nn.Module):
    def __init__(self, scales: int, dim: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(scales, dim))


class _Encoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, layers: int, scales: int) -> None:
        super().__init__()
        self.posembed_input = _PositionEmbedding(HASH_GRID, dim)
        self.scaleembed_input = _ScaleEmbedding(scales, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _Block(dim, mlp_dim, max(1, dim // 64))
                                          for i in range(layers)})


def _hash_positions(count_h: int, count_w: int) -> torch.Tensor:
    """Index [count_h * count_w] of each patch's cell on the 10x10 grid (nearest interpolation)."""
    grid = torch.arange(HASH_GRID, dtype=torch.float32).reshape(1, 1, HASH_GRID)
    cols = F.interpolate(grid, size=count_w, mode="nearest").reshape(1, count_w).expand(count_h, count_w)
    rows = F.interpolate(grid, size=count_h, mode="nearest").reshape(count_h, 1).expand(count_h, count_w)
    return (rows * HASH_GRID + cols).reshape(-1)


def _patches(image: torch.Tensor, scale_id: int, max_len: int | None) -> tuple[torch.Tensor, ...]:
    """Patches [N, L, 3*32*32], spatial and scale indices [N, L], mask [N, L] of one scale."""
    n, _, h, w = image.shape
    padded = _same_pad(image, PATCH, PATCH)
    patches = F.unfold(padded, PATCH, stride=PATCH).transpose(1, 2)  # channel-major within a patch
    count = patches.shape[1]
    spatial = _hash_positions(math.ceil(h / PATCH), math.ceil(w / PATCH)).expand(n, count)
    scale = torch.full((n, count), float(scale_id))
    mask = torch.ones(n, count)
    if max_len is not None:
        def fit(t: torch.Tensor) -> torch.Tensor:
            pad = torch.zeros(*t.shape[:1], max(0, max_len - t.shape[1]), *t.shape[2:], dtype=t.dtype)
            return torch.cat([t, pad], dim=1)[:, :max_len]

        patches, spatial, scale, mask = fit(patches), fit(spatial), fit(scale), fit(mask)
    return patches, spatial, scale, mask


class MUSIQ(nn.Module):
    """Images [N, 3, H, W] in [0, 1] -> quality scores [N] (SPAQ: 0..100)."""

    def __init__(self, hidden: int = 384, mlp_dim: int = 1152, layers: int = 14, stem: int = 64) -> None:
        super().__init__()
        self.conv_root = StdConv(3, stem, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, stem, eps=1e-6)
        self.block1 = Bottleneck(stem, stem * 4)
        self.embedding = nn.Linear(stem * 4 * (PATCH // 4) ** 2, hidden)
        self.transformer_encoder = _Encoder(hidden, mlp_dim, layers, scales=len(LONGER_SIDES) + 1)
        self.head = nn.Linear(hidden, 1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 0.5) * 2
        h, w = x.shape[-2:]
        parts = []
        for scale_id, longer in enumerate(LONGER_SIDES):
            ratio = longer / max(h, w)
            resized = F.interpolate(x, size=(round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False)
            parts.append(_patches(resized, scale_id, math.ceil(longer / PATCH) ** 2))
        parts.append(_patches(x, len(LONGER_SIDES), None))
        patches, spatial, scale, mask = (torch.cat(t, dim=1) for t in zip(*parts))
        n, length, _ = patches.shape
        tokens = patches.reshape(n * length, 3, PATCH, PATCH)
        tokens = F.relu(self.gn_root(self.conv_root(tokens)))
        tokens = F.max_pool2d(_same_pad(tokens, 3, 2), 3, 2)
        tokens = self.block1(tokens).permute(0, 2, 3, 1).reshape(n, length, -1)  # TF channel order
        tokens = self.embedding(tokens)
        enc = self.transformer_encoder
        tokens = tokens + enc.posembed_input.position_emb[0][spatial.long()]
        tokens = tokens + enc.scaleembed_input.scale_emb[scale.long()]
        tokens = torch.cat([enc.cls.expand(n, 1, -1), tokens], dim=1)
        mask = torch.cat([torch.ones(n, 1), mask], dim=1).bool().to(tokens.device)
        for block in enc.transformer.values():
            tokens = block(tokens, mask)
        return self.head(enc.encoder_norm(tokens)[:, 0]).reshape(n)


def load_musiq(path: str | os.PathLike, device: torch.device | str = "cpu") -> MUSIQ:
    """MUSIQ from pyiqa's checkpoint (``musiq_spaq_ckpt-358bb6af.pth``; sizes read from the tensors)."""
    state = read_state_dict(path, "MUSIQ")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    needed = ("embedding.weight", "transformer_encoder.encoderblock_0.mlp.fc1.weight", "head.weight", "conv_root.weight")
    needed = tuple(k.replace("transformer_encoder.", "transformer_encoder.transformer.") if "encoderblock" in k else k
                   for k in needed)
    if any(k not in state for k in needed):
        raise InputError(f"{path}: not a pyiqa MUSIQ checkpoint (needs {', '.join(needed)})")
    if state["head.weight"].shape[0] != 1:
        raise InputError(f"{path}: MUSIQ head with {state['head.weight'].shape[0]} outputs; VBench uses the "
                         "single-score SPAQ model (musiq_spaq_ckpt-358bb6af.pth)")
    layers = 1 + max(int(k.split(".")[2].split("_")[1]) for k in state
                     if k.startswith("transformer_encoder.transformer.encoderblock_"))
    model = MUSIQ(hidden=state["embedding.weight"].shape[0],
                  mlp_dim=state["transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight"].shape[0],
                  layers=layers, stem=state["conv_root.weight"].shape[0])
    load_into(model, state, path, "MUSIQ")
    return model.to(device)
