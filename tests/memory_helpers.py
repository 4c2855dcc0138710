"""A tiny random SteadyDancer DiT and inputs, shared by the memory/speed tests."""

from __future__ import annotations

import torch

from steadydancer.models.dit import SteadyDancerDiT
from steadydancer.sampling.conditions import DiTConditions

TINY = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=3, text_dim=16, clip_dim=24, align_dim=16,
            align_heads=2, text_len=12, in_dim=36, in_dim_c=16, out_dim=16)


def tiny_dit(seed: int = 0, **overrides) -> SteadyDancerDiT:
    torch.manual_seed(seed)
    model = SteadyDancerDiT(**{**TINY, **overrides}).eval().requires_grad_(False)
    with torch.no_grad():       # the official init leaves some tensors at zero; randomise all
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def tiny_conditions(seed: int = 1, frames: int = 2, h: int = 4, w: int = 4, text_tokens: int = 5,
                    batch: int = 1) -> DiTConditions:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return DiTConditions(text_context=r(batch, text_tokens, TINY["text_dim"]),
                         clip_image=r(batch, 3, TINY["clip_dim"]), clip_pose=r(batch, 3, TINY["clip_dim"]),
                         image_cond=r(batch, 20, frames, h, w), pose_latents=r(batch, 16, frames, h, w),
                         ref_image=r(batch, 36, 1, h, w), ref_pose=r(batch, 36, 1, h, w))


def tiny_latents(seed: int = 2, frames: int = 2, h: int = 4, w: int = 4, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, frames, h, w, generator=torch.Generator().manual_seed(seed))
