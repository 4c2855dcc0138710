"""The condition set the DiT takes besides the noisy latent and the timestep."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class DiTConditions:
    """One condition set, batched along dim 0 (B).

    Shapes (F latent frames, h x w latent size):
      text_context [B, L, C_text] (L <= text_len; shorter is zero-padded, as the official code does)
      clip_image   [B, 257, 1280]  CLIP features of the reference image
      clip_pose    [B, 257, 1280]  CLIP features of the first positive pose frame
      image_cond   [B, 20, F, h, w] first-frame mask (4) + latent of (image, zeros...) (16)
      pose_latents [B, 16, F, h, w] pose-video latent (positive or negative stream)
      ref_image    [B, 36, 1, h, w] [latent16, ones4, latent16] of the reference image
      ref_pose     [B, 36 or 16, 1, h, w] first positive pose frame latent (first 16 used)
    """

    text_context: torch.Tensor
    clip_image: torch.Tensor
    clip_pose: torch.Tensor
    image_cond: torch.Tensor
    pose_latents: torch.Tensor
    ref_image: torch.Tensor
    ref_pose: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the DiT forward (same names as the fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DiTConditions":
        """Move every tensor (floating tensors also cast to ``dtype`` when given)."""
        return replace(self, **{k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                                for k, v in self.as_kwargs().items()})

    @property
    def batch_size(self) -> int:
        return self.text_context.shape[0]

    @staticmethod
    def cat(items: list["DiTConditions"]) -> "DiTConditions":
        """Concatenate along the batch; text contexts are zero-padded to the longest first."""
        longest = max(c.text_context.shape[1] for c in items)
        texts = [torch.nn.functional.pad(c.text_context, (0, 0, 0, longest - c.text_context.shape[1]))
                 for c in items]
        merged = {f.name: torch.cat([getattr(c, f.name) for c in items]) for f in fields(DiTConditions)
                  if f.name != "text_context"}
        return DiTConditions(text_context=torch.cat(texts), **merged)
