"""The SteadyDancer diffusion transformer (Wan 2.1 I2V DiT + pose conditioning).

Loads the released ``config.json`` and weights unchanged (same tensor names). The forward is
split into stages so that sequence parallelism and block swapping can hook in::

    emb = model.embed(latents, timestep, **conditions)      # tokens, RoPE, modulation, context
    x = emb.tokens
    for block in model.blocks:
        x = block(x, emb.modulation, emb.freqs, emb.context)
    out = model.unembed(x, emb)

Precision: the model computes in the dtype of its weights. Norms run in float32 and are cast
back; RoPE is applied in float32 with angles computed in float64. With bf16 weights this follows
the official bf16 run under CUDA autocast (including its bf16 time modulation, which the
SteadyDancer code keeps in bf16 where Wan 2.1 used float32); with float32 weights it is the
float32 computation of the parity reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .attention import attention
from .pose_modules import (FrameAttentionAlignmentUnit, SpatialStructureAdaptiveExtractor,
                           TemporalMotionCoherenceModule)

# Position tables of the released model cover this many positions per axis.
ROPE_MAX_POSITIONS = 1024


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] float64 as [cos | sin] with frequencies 10000^(-i/(dim/2))."""
    half = dim // 2
    position = position.to(torch.float64)
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half, device=position.device,
                                                                   dtype=torch.float64).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Complex channels given to (time, height, width) out of head_dim // 2."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_frequencies(grid: tuple[int, int, int], head_dim: int, device: torch.device | str,
                     theta: float = 10000.0) -> torch.Tensor:
    """Rotations for the tokens of an (F, H, W) grid, in token order (f, h, w).

    Returns complex64 [F*H*W, head_dim // 2]; each axis uses its own channel group with
    frequencies theta^(-2i/axis_dim), angles computed in float64.
    """
    if max(grid) > ROPE_MAX_POSITIONS:
        raise ValueError(f"token grid {grid} exceeds {ROPE_MAX_POSITIONS} positions per axis")
    parts = []
    for axis, (size, pairs) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        axis_dim = 2 * pairs
        inv_freq = 1.0 / torch.pow(theta, torch.arange(0, axis_dim, 2, device=device,
                                                        dtype=torch.float64).div(axis_dim))
        angles = torch.outer(torch.arange(size, device=device, dtype=torch.float64), inv_freq)
        shape = [1, 1, 1, pairs]
        shape[axis] = size
        parts.append(angles.view(shape).expand(*grid, pairs))
    angles = torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, heads, head_dim] by freqs [L, head_dim // 2] (complex)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * freqs[None, :, None, :]).flatten(3)
    return rotated.to(x.dtype)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32, cast back, then scaled by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class LayerNormFP32(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    """Self-attention with RMS-normed q/k and 3D RoPE. x [B, L, dim] -> [B, L, dim]."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        # Kernel for q, k, v [B, L, heads, head_dim]; sequence parallelism puts its own here
        # (steadydancer.distributed), None means the local attention backends.
        self.attention_fn = None

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        return self.o(self.attend(*self.project(x, freqs)).flatten(2))

    def project(self, x: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, L, heads, head_dim] of x [B, L, dim] (q, k normed and rotated); per token."""
        heads = (self.num_heads, self.head_dim)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), freqs)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), freqs)
        return q, k, self.v(x).unflatten(-1, heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The attention kernel over all tokens: [B, L, heads, head_dim] (before the output projection)."""
        return (self.attention_fn or attention)(q, k, v)


class ImageTextCrossAttention(nn.Module):
    """Cross-attention to [image tokens | text tokens], the two attended separately and summed.

    x [B, L, dim], context [B, n_image + text_len, dim] -> [B, L, dim].
    """

    def __init__(self, dim: int, num_heads: int, text_len: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.text_len = text_len
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attend(x, self.context_keys_values(context))

    def context_keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(image k, image v, text k, text v) [B, n, heads, head_dim] of the context."""
        heads = (self.num_heads, self.head_dim)
        n_image = context.shape[1] - self.text_len
        image, text = context[:, :n_image], context[:, n_image:]
        return (self.norm_k_img(self.k_img(image)).unflatten(-1, heads), self.v_img(image).unflatten(-1, heads),
                self.norm_k(self.k(text)).unflatten(-1, heads), self.v(text).unflatten(-1, heads))

    def attend(self, x: torch.Tensor, keys_values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x [B, L, dim] attending to :meth:`context_keys_values`; each token on its own."""
        k_image, v_image, k_text, v_text = keys_values
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, self.head_dim))
        from_image = attention(q, k_image, v_image)
        from_text = attention(q, k_text, v_text)
        return self.o(from_text.flatten(2) + from_image.flatten(2))


class DiTBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated FFN.

    x [B, L, dim]; modulation [B, 6, dim]; freqs [L, head_dim // 2] complex;
    context [B, n_image + text_len, dim] -> [B, L, dim].
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, text_len: int, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = LayerNormFP32(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = LayerNormFP32(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = ImageTextCrossAttention(dim, num_heads, text_len, qk_norm, eps)
        self.norm2 = LayerNormFP32(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        # Tokens per chunk of the block's per-token work (None: all at once); see _forward_chunked.
        self.token_chunk_size: int | None = None

    def forward(self, x: torch.Tensor, e: torch.Tensor, freqs: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e).chunk(6, dim=1)
        if self.token_chunk_size and x.shape[1] > self.token_chunk_size:
            return self._forward_chunked(x, (shift1, scale1, gate1, shift2, scale2, gate2), freqs, context)
        x = x + self.self_attn(self.norm1(x) * (1 + scale1) + shift1, freqs) * gate1
        x = x + self.cross_attn(self.norm3(x), context)
        x = x + self.ffn(self.norm2(x) * (1 + scale2) + shift2) * gate2
        return x

    def _forward_chunked(self, x: torch.Tensor, modulation: tuple[torch.Tensor, ...], freqs: torch.Tensor,
                         context: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with everything but the self-attention kernel run over ``token_chunk_size``
        tokens at a time.

        Norms, projections, RoPE, cross-attention and the FFN act on each token alone, so only q, k,
        v and the attention output are held for all tokens, not the float32 norms, the FFN's hidden
        activation (tokens x ffn_dim, a block's largest tensor) or the other temporaries: the peak of
        a block drops to about half for long videos. Each token goes through the same operations as
        in :meth:`forward`.
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation
        chunks = [slice(start, start + self.token_chunk_size) for start in range(0, x.shape[1], self.token_chunk_size)]
        q = k = v = None
        for part in chunks:
            q_part, k_part, v_part = self.self_attn.project(self.norm1(x[:, part]) * (1 + scale1) + shift1,
                                                            freqs[part])
            if q is None:
                q, k, v = (part_.new_empty(x.shape[:2] + part_.shape[2:]) for part_ in (q_part, k_part, v_part))
            q[:, part], k[:, part], v[:, part] = q_part, k_part, v_part
        attended = self.self_attn.attend(q, k, v).flatten(2)
        del q, k, v, q_part, k_part, v_part
        keys_values = self.cross_attn.context_keys_values(context)
        out = None
        for part in chunks:
            y = x[:, part] + self.self_attn.o(attended[:, part]) * gate1
            y = y + self.cross_attn.attend(self.norm3(y), keys_values)
            y = y + self.ffn(self.norm2(y) * (1 + scale2) + shift2) * gate2
            if out is None:
                out = y.new_empty(x.shape[:2] + y.shape[2:])
            out[:, part] = y
        return out


class OutputHead(nn.Module):
    """Modulated LayerNorm + linear to patch pixels. x [B, L, dim], e [B, dim] -> [B, L, prod(patch)*out]."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = LayerNormFP32(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class ImageProjection(nn.Module):
    """CLIP tokens [B, N, clip_dim] -> [B, N, dim] float32 (its LayerNorms keep float32 out)."""

    def __init__(self, clip_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                  nn.Linear(clip_dim, dim), nn.LayerNorm(dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        norm_in, fc1, act, fc2, norm_out = self.proj
        x = F.layer_norm(features.float(), norm_in.normalized_shape, norm_in.weight.float(),
                         norm_in.bias.float(), norm_in.eps)
        x = fc2(act(fc1(x.to(fc1.weight.dtype))))
        return F.layer_norm(x.float(), norm_out.normalized_shape, norm_out.weight.float(),
                            norm_out.bias.float(), norm_out.eps)


@dataclass
class DiTEmbedding:
    """What :meth:`SteadyDancerDiT.embed` hands to the blocks and to :meth:`unembed`.

    tokens [B, L, dim] (L = (F+2)*H*W patches: video frames, then ref image, then ref pose);
    freqs [L, head_dim // 2] complex64 RoPE rotations of each token; modulation [B, 6, dim];
    time [B, dim] (for the head); context [B, n_image + text_len, dim];
    grid (F+2, H, W) in patches; num_frames F latent frames returned.
    """

    tokens: torch.Tensor
    freqs: torch.Tensor
    modulation: torch.Tensor
    time: torch.Tensor
    context: torch.Tensor
    grid: tuple[int, int, int]
    num_frames: int


class SteadyDancerDiT(ModelMixin, ConfigMixin):
    """SteadyDancer DiT. Constructor names = the official ``WanModel`` config fields.

    ``clip_dim``, ``align_dim`` and ``align_heads`` are ours (the official code hard-codes
    1280, 128 and 8); the loader reads the first two from the tensor shapes.
    """

    config_name = "config.json"
    _no_split_modules = ["DiTBlock"]
    # Fields the official config.json never contains.
    ignore_for_config = ["patch_size", "cross_attn_norm", "qk_norm", "text_dim", "window_size",
                         "clip_dim", "align_dim", "align_heads"]

    @register_to_config
    def __init__(self, model_type: str = "i2v", patch_size: tuple[int, int, int] = (1, 2, 2),
                 text_len: int = 512, in_dim: int = 16, in_dim_c: int = 16, dim: int = 2048,
                 ffn_dim: int = 8192, freq_dim: int = 256, text_dim: int = 4096, out_dim: int = 16,
                 num_heads: int = 16, num_layers: int = 32, window_size: tuple[int, int] = (-1, -1),
                 qk_norm: bool = True, cross_attn_norm: bool = True, eps: float = 1e-6,
                 clip_dim: int = 1280, align_dim: int = 128, align_heads: int = 8):
        super().__init__()
        if model_type != "i2v":
            raise ValueError(f"model_type {model_type!r}: SteadyDancer is an i2v model")
        if tuple(window_size) != (-1, -1):
            raise ValueError(f"window_size {window_size}: only global attention (-1, -1) is supported")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of even size")
        self.patch_size = tuple(patch_size)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.freq_dim = freq_dim
        self.text_len = text_len
        self.out_dim = out_dim
        self.in_dim_c = in_dim_c

        self.patch_embedding = nn.Conv3d(in_dim, dim, self.patch_size, self.patch_size)  # reference image
        self.patch_embedding_fuse = nn.Conv3d(in_dim + 2 * in_dim_c, dim, self.patch_size, self.patch_size)
        self.patch_embedding_ref_c = nn.Conv3d(in_dim_c, dim, self.patch_size, self.patch_size)  # ref pose

        self.condition_embedding_spatial = SpatialStructureAdaptiveExtractor(in_dim_c, in_dim_c)
        self.condition_embedding_temporal = TemporalMotionCoherenceModule(in_dim_c)
        self.condition_embedding_align = FrameAttentionAlignmentUnit(in_dim_c, out_dim, align_dim, align_heads)

        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([
            DiTBlock(dim, ffn_dim, num_heads, text_len, qk_norm, cross_attn_norm, eps) for _ in range(num_layers)])
        self.head = OutputHead(dim, out_dim, self.patch_size, eps)
        self.img_emb = ImageProjection(clip_dim, dim)

    # -- stages -------------------------------------------------------------------------------

    def embed_pose(self, pose_latents: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pose latent [B, C_pose, F, h, w] -> (fused zp* = zp + TMCM + SSAE, aligned FAAU(latents, zp*))."""
        b, c, f, h, w = pose_latents.shape
        temporal = self.condition_embedding_temporal(pose_latents)
        frames = pose_latents.transpose(1, 2).reshape(b * f, c, h, w)
        spatial = self.condition_embedding_spatial(frames).view(b, f, -1, h, w).transpose(1, 2)
        fused = pose_latents + temporal + spatial
        aligned = self.condition_embedding_align(fused, latents)
        return fused, aligned

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, text_context: torch.Tensor,
              clip_image: torch.Tensor, clip_pose: torch.Tensor, image_cond: torch.Tensor,
              pose_latents: torch.Tensor, ref_image: torch.Tensor, ref_pose: torch.Tensor) -> DiTEmbedding:
        """Inputs (shapes as in :meth:`forward`) -> tokens, RoPE, time modulation and context."""
        dtype = self.patch_embedding.weight.dtype
        b, _, num_frames, _, _ = latents.shape
        if text_context.shape[1] > self.text_len:
            raise ValueError(f"text context of {text_context.shape[1]} tokens exceeds text_len {self.text_len}")
        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(b)

        fused, aligned = self.embed_pose(pose_latents, latents)
        video = torch.cat([latents, image_cond, fused, aligned], dim=1)
        grid = torch.cat([
            self.patch_embedding_fuse(video.to(dtype)),
            self.patch_embedding(ref_image.to(dtype)),
            self.patch_embedding_ref_c(ref_pose[:, :self.in_dim_c].to(dtype)),
        ], dim=2)
        grid_size = tuple(grid.shape[2:])
        tokens = grid.flatten(2).transpose(1, 2)
        freqs = rope_frequencies(grid_size, self.head_dim, tokens.device)

        time = self.time_embedding(sinusoidal_embedding(self.freq_dim, timestep).to(dtype))
        modulation = self.time_projection(time).unflatten(1, (6, self.dim))

        # Zero-pad to text_len as the official code does for every prompt (so padding is exact).
        text = F.pad(text_context, (0, 0, 0, self.text_len - text_context.shape[1]))
        text = self.text_embedding(text.to(dtype))
        image = self.img_emb(clip_image) + self.img_emb(clip_pose)
        context = torch.cat([image.to(dtype), text], dim=1)
        return DiTEmbedding(tokens, freqs, modulation, time, context, grid_size, num_frames)

    def unembed(self, tokens: torch.Tensor, embedding: DiTEmbedding) -> torch.Tensor:
        """Tokens [B, L, dim] -> [B, out_dim, F, h, w] (the reference frames are dropped)."""
        x = self.head(tokens, embedding.time)
        f, h, w = embedding.grid
        pt, ph, pw = self.patch_size
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, self.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(x.shape[0], self.out_dim, f * pt, h * ph, w * pw)
        return x[:, :, :embedding.num_frames]

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_context: torch.Tensor,
                clip_image: torch.Tensor, clip_pose: torch.Tensor, image_cond: torch.Tensor,
                pose_latents: torch.Tensor, ref_image: torch.Tensor, ref_pose: torch.Tensor) -> torch.Tensor:
        """Predict the flow for a batch of B independent samples.

        latents [B, 16, F, h, w]; timestep [B] on the 0..1000 scale; text_context [B, L, C_text]
        (L <= text_len); clip_image, clip_pose [B, 257, 1280]; image_cond [B, 20, F, h, w];
        pose_latents [B, 16, F, h, w]; ref_image [B, 36, 1, h, w]; ref_pose [B, 36 or 16, 1, h, w]
        -> [B, 16, F, h, w] in the model's dtype.
        """
        embedding = self.embed(latents, timestep, text_context, clip_image, clip_pose, image_cond,
                               pose_latents, ref_image, ref_pose)
        x = embedding.tokens
        for block in self.blocks:
            x = block(x, embedding.modulation, embedding.freqs, embedding.context)
        return self.unembed(x, embedding)
