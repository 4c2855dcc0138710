"""Guidance passes of one step in one batched forward, and skipping the negative-text pass at g=1.

Both plug into ``sample_dc_cfg(..., passes=make_passes(...))`` without changing the loop, which
hands ``passes`` the condition sets of a step in the order [cond, neg_text, (neg_pose)].

Batching: the sets are concatenated along the batch (text contexts zero-padded to the longest;
the DiT zero-pads every context to text_len anyway, so this changes no number) and the DiT runs
once with B = 2 or 3. The samples of a batch never interact inside the DiT, so the predictions
equal the separate passes up to float rounding (a batch-3 matmul is blocked differently
from three batch-1 ones: ~1e-6 relative in float32).
Costs B times the activation memory of one pass.

Guidance scale 1 (distilled LoRAs such as lightx2v): u_txt + 1 * (c - u_txt) is c, so the
negative-text pass is not run; its slot gets c's prediction, which makes the combination return
c exactly (and c + g_pose (c - u_pose) inside the pose window).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .conditions import DiTConditions
from .dc_cfg import DenoiseModel, run_passes

__all__ = ["run_passes_batched", "make_passes"]


def run_passes_batched(model: DenoiseModel, latent: torch.Tensor, timestep: torch.Tensor,
                       conditions: Sequence[DiTConditions], out_device: torch.device) -> list[torch.Tensor]:
    """Same contract as ``dc_cfg.run_passes``, with one model call of batch len(conditions)."""
    batch = DiTConditions.cat(list(conditions))
    n = len(conditions)
    preds = model(latent[None].expand(n, *latent.shape), timestep.reshape(-1)[:1].expand(n), **batch.as_kwargs())
    return [p.to(device=out_device) for p in preds.unbind(0)]


def make_passes(batch_guidance: bool = False, skip_negative_text: bool = False) -> Callable[..., list[torch.Tensor]]:
    """A ``passes`` function for ``sample_dc_cfg``.

    batch_guidance: run a step's passes as one batched forward. skip_negative_text: do not run
    the second set (neg_text); use only when guide_scale == 1.
    """
    inner = run_passes_batched if batch_guidance else run_passes

    def passes(model: DenoiseModel, latent: torch.Tensor, timestep: torch.Tensor,
               conditions: Sequence[DiTConditions], out_device: torch.device) -> list[torch.Tensor]:
        if not skip_negative_text:
            return inner(model, latent, timestep, conditions, out_device)
        kept = [conditions[0]] + list(conditions[2:])
        preds = inner(model, latent, timestep, kept, out_device)
        return [preds[0], preds[0]] + preds[1:]

    return passes
