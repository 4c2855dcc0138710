"""SteadyDancer's pose modulation modules, with the parameter names of the released weights.

- SSAE (``condition_embedding_spatial``): a dynamic-convolution module (DCD / "DYModule" style)
  applied to every latent frame on its own.
- TMCM (``condition_embedding_temporal``): three factorised 3D convolutions (depthwise 1xkxk in
  space, then kx1x1 across time), each followed by SiLU.
- FAAU (``condition_embedding_align``): attention from the noisy latent (query) to the fused pose
  latent (key/value), then a LayerNorm2D + 1x1-conv FFN. Note the attention axis: the released
  model feeds [frames, H*W, C] tensors to a sequence-first attention, so each spatial position
  attends across the latent frames. We keep that, per sample (the official code only runs B = 1).

Dtypes: each layer casts its input to its own weight dtype (what CUDA autocast does in the
official bf16 run); group norms run in float32 and return float32, as autocast makes them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _as(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``x`` in the dtype of ``layer``'s weight (mixed-precision inputs meet one weight dtype)."""
    return x.to(layer.weight.dtype)


def _hard_sigmoid_x2(x: torch.Tensor) -> torch.Tensor:
    # The DCD code's "Hsigmoid" divides by 3, not 6: its range is [0, 2], not torch's Hardsigmoid.
    return F.relu6(x + 3.0) / 3.0


def _group_norm_fp32(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)


class _GatedLinear(nn.Module):
    """x * hsigmoid2(W x): the squeeze-excitation gate of the SSAE (``fc.1``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _hard_sigmoid_x2(self.fc(_as(x, self.fc[0])))


class SpatialStructureAdaptiveExtractor(nn.Module):
    """SSAE: dynamic convolution on single frames [N, C_in, H, W] -> [N, C_out, H, W].

    out = scale(x) * conv(x) + conv_p(GN(phi(x) @ GN(conv_q(x))) + GN(conv_q(x))), where the
    per-sample matrix phi and channel scale come from a pooled descriptor of x.
    """

    def __init__(self, in_channels: int, out_channels: int, fc_squeeze: int = 8):
        super().__init__()
        # Sizes follow the DCD recipe, so the released tensor shapes come out the same.
        if in_channels < out_channels:
            self.mul, reduction, pool = 4, 8, 2
        else:
            self.mul, reduction, pool = 1, 2, 1
        self.pool_size = pool
        rank = min(in_channels * self.mul // reduction, out_channels // reduction)
        while rank ** 2 > in_channels * self.mul * 2:
            reduction *= 2
            rank = min(in_channels * self.mul // reduction, out_channels // reduction)
        self.rank = max(rank, 4)
        squeeze = max(max(in_channels * self.mul, self.rank ** 2) // fc_squeeze, 4)

        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv_q = nn.Conv2d(in_channels, self.rank, 1, bias=False)
        self.fc = nn.Sequential(nn.Linear(in_channels * self.mul, squeeze, bias=False), _GatedLinear(squeeze))
        self.fc_phi = nn.Linear(squeeze, self.rank ** 2, bias=False)
        self.fc_scale = nn.Linear(squeeze, out_channels, bias=False)
        self.conv_p = nn.Conv2d(self.rank, out_channels, 1, bias=False)
        self.bn1 = nn.GroupNorm(4, self.rank)
        self.bn2 = nn.GroupNorm(4, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        static = self.conv(_as(x, self.conv))
        descriptor = F.adaptive_avg_pool2d(x, self.pool_size).reshape(n, c * self.mul)
        descriptor = self.fc(_as(descriptor, self.fc[0]))
        phi = self.fc_phi(descriptor).view(n, self.rank, self.rank)
        scale = _hard_sigmoid_x2(self.fc_scale(descriptor)).view(n, -1, 1, 1)
        static = scale * static

        low = _group_norm_fp32(self.conv_q(_as(x, self.conv_q)), self.bn1).view(n, self.rank, h * w)
        mixed = torch.matmul(phi, low.to(phi.dtype))
        low = _group_norm_fp32(mixed, self.bn2) + low
        dynamic = self.conv_p(_as(low.view(n, self.rank, h, w), self.conv_p))
        return dynamic + static


class FactorisedConv3d(nn.Module):
    """Depthwise 1xkxk spatial conv, SiLU, then a kx1x1 temporal conv. [B,C,T,H,W] -> same size."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int, int] = (3, 3, 3)):
        super().__init__()
        k_t, k_h, k_w = kernel_size
        self.spatial = nn.Conv3d(in_channels, in_channels, (1, k_h, k_w), padding=(0, k_h // 2, k_w // 2),
                                 groups=in_channels, bias=False)
        self.temporal = nn.Conv3d(in_channels, out_channels, (k_t, 1, 1), padding=(k_t // 2, 0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(F.silu(self.spatial(_as(x, self.spatial))))


class TemporalMotionCoherenceModule(nn.Sequential):
    """TMCM: (FactorisedConv3d, SiLU) x 3 on the pose latent [B, C, T, H, W]."""

    def __init__(self, channels: int, depth: int = 3):
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [FactorisedConv3d(channels, channels), nn.SiLU()]
        super().__init__(*layers)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of [N, C, H, W] (biased variance), affine [1, C, 1, 1]."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class FrameAttention(nn.Module):
    """Multi-head attention with the parameter names of torch's MultiheadAttention
    (``in_proj_weight`` [3E, E], ``in_proj_bias``, ``out_proj``).

    query [N, Lq, E], key_value [N, Lk, E] -> [N, Lq, E] (batch first).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # what torch's MultiheadAttention starts from

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q)
        k = F.linear(key_value, w_k, b_k)
        v = F.linear(key_value, w_v, b_v)
        n, lq, dim = q.shape
        heads = lambda t: t.unflatten(-1, (self.num_heads, dim // self.num_heads)).transpose(1, 2)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class FrameAttentionAlignmentUnit(nn.Module):
    """FAAU: align the fused pose latent to the noisy latent.

    pose [B, C_pose, T, H, W], latents [B, C_x, T, H, W] -> [B, C_pose, T, H, W].
    """

    def __init__(self, pose_channels: int, latent_channels: int, hidden_dim: int = 128, num_heads: int = 8):
        super().__init__()
        self.proj_p = nn.Conv2d(pose_channels, hidden_dim, 1)
        self.proj_r = nn.Conv2d(latent_channels, hidden_dim, 1)
        self.proj_p_back = nn.Conv2d(hidden_dim, pose_channels, 1)
        self.cross_attn = FrameAttention(hidden_dim, num_heads)
        self.ffn_pose = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 1), nn.SiLU(),
                                      nn.Conv2d(hidden_dim, hidden_dim, 1))
        self.norm1 = LayerNorm2d(hidden_dim)
        self.norm2 = LayerNorm2d(hidden_dim)

    def forward(self, pose: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = pose.shape
        frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
        p = self.proj_p(_as(frames(pose), self.proj_p))
        r = self.proj_r(_as(frames(latents), self.proj_r))
        hidden = p.shape[1]
        # [B*T, E, H, W] -> [B*H*W, T, E]: every spatial position attends across the frames.
        tokens = lambda v: v.view(b, t, hidden, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, hidden)
        out = self.cross_attn(tokens(r), tokens(p))
        out = out.view(b, h * w, t, hidden).permute(0, 2, 3, 1).reshape(b * t, hidden, h, w)
        out = self.norm1(out)
        out = self.norm2(out + self.ffn_pose(out))
        out = self.proj_p_back(out)
        return out.view(b, t, -1, h, w).transpose(1, 2)
