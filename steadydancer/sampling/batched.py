"""How the guidance passes of one step run: one forward each, one batched forward, without the
negative-text pass at g=1, and spread over the ranks of a CFG-parallel group.

``sample_dc_cfg(..., passes=GuidancePasses(...))`` hands ``passes`` the condition sets of a step
in the order [cond, neg_text, (neg_pose)] and gets one prediction per set back; none of the
choices below changes the loop.

Batching: the sets are concatenated along the batch (text contexts zero-padded to the longest;
the DiT zero-pads every context to text_len anyway, so this changes no number) and the DiT runs
once with B = 2 or 3. The samples of a batch never interact inside the DiT, so the predictions
equal the separate passes up to float rounding (a batch-3 matmul is blocked differently
from three batch-1 ones: ~1e-6 relative in float32).
Costs B times the activation memory of one pass.

Guidance scale 1 (distilled LoRAs such as lightx2v): u_txt + 1 * (c - u_txt) is c, so the
negative-text pass is not run; its slot gets c's prediction, which makes the combination return
c exactly (and c + g_pose (c - u_pose) inside the pose window).

CFG parallelism (``split``): the passes that run are dealt round-robin over the ranks of a CFG
group (pass j of the step to rank j mod degree); each rank runs its own (batched or not) and the
predictions are gathered before the guidance combination, so every rank steps the sampler on the
same numbers (steadydancer.distributed.cfg_parallel).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import torch

from .conditions import DiTConditions

__all__ = ["DenoiseModel", "GuidancePasses", "PassRunner", "PassSplit", "make_passes", "run_passes",
           "run_passes_batched"]

class DenoiseModel(Protocol):
    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        """latents [B,16,F,h,w], timestep [B] (0..1000) -> flow prediction [B,16,F,h,w]."""


def run_passes(model: DenoiseModel, latent: torch.Tensor, timestep: torch.Tensor,
               conditions: Sequence[DiTConditions], out_device: torch.device) -> list[torch.Tensor]:
    """One model call per condition set; returns the predictions [16,F,h,w] on ``out_device``.

    ``latent`` [16,F,h,w] and ``timestep`` [1] are already on the model's device. Predictions keep
    the model's output dtype: the official code combines the guidance passes in that dtype (bf16
    on GPU) and only the solver step works in float32.
    """
    outputs = []
    for cond in conditions:
        pred = model(latent[None], timestep, **cond.as_kwargs())[0]
        outputs.append(pred.to(device=out_device))
        del pred
    return outputs


# runner(model, latent [16,F,h,w], timestep [1], condition sets, out_device, pass indices, window)
#   -> one prediction [16,F,h,w] per condition set. The pass indices (0 cond, 1 neg_text,
#   2 neg_pose) name the sets (a step cache keeps one context per pass); window: the long-video
#   window start (0 for one window). The set list may be empty (a CFG rank with nothing to run).
PassRunner = Callable[..., list[torch.Tensor]]


class PassSplit(Protocol):
    """Which passes this rank runs and how the others' predictions reach it (CFG parallelism)."""

    def assign(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of the pass indices that run this step."""

    def gather(self, indices: Sequence[int], local: dict[int, torch.Tensor], like: torch.Tensor,
               out_device: torch.device) -> dict[int, torch.Tensor]:
        """Every pass's prediction (index -> [16,F,h,w] on ``out_device``) from this rank's
        ``local`` ones; ``like``: the latent (shape and device of the exchange)."""

    def sum_counts(self, counts: Sequence[int]) -> list[int]:
        """Each count summed over the ranks that share the passes."""


def run_passes_batched(model: DenoiseModel, latent: torch.Tensor, timestep: torch.Tensor,
                       conditions: Sequence[DiTConditions], out_device: torch.device) -> list[torch.Tensor]:
    """Same contract as ``dc_cfg.run_passes``, with one model call of batch len(conditions)."""
    n = len(conditions)
    if n == 0:
        return []
    batch = DiTConditions.cat(list(conditions))
    preds = model(latent[None].expand(n, *latent.shape), timestep.reshape(-1)[:1].expand(n), **batch.as_kwargs())
    return [p.to(device=out_device) for p in preds.unbind(0)]


def _sequential(model, latent, timestep, conditions, out_device, indices, window):
    return run_passes(model, latent, timestep, conditions, out_device)


def _batched(model, latent, timestep, conditions, out_device, indices, window):
    return run_passes_batched(model, latent, timestep, conditions, out_device)


@dataclass(frozen=True)
class GuidancePasses:
    """A ``passes`` function for ``sample_dc_cfg`` / ``sample_dc_cfg_windowed``.

    batch_guidance: a step's passes (this rank's share of them) as one batched forward.
    skip_negative_text: do not run the second set (neg_text); use only when guide_scale == 1.
    split: CFG parallelism (None: this process runs every pass). runner: how the chosen passes
    run (None: by ``batch_guidance``; a step cache puts its own here).
    """

    batch_guidance: bool = False
    skip_negative_text: bool = False
    split: PassSplit | None = None
    runner: PassRunner | None = None

    def with_runner(self, runner: PassRunner) -> "GuidancePasses":
        return replace(self, runner=runner)

    def with_split(self, split: PassSplit | None) -> "GuidancePasses":
        return replace(self, split=split)

    def __call__(self, model: DenoiseModel, latent: torch.Tensor, timestep: torch.Tensor,
                 conditions: Sequence[DiTConditions], out_device: torch.device, window: int = 0
                 ) -> list[torch.Tensor]:
        running = [i for i in range(len(conditions)) if not (self.skip_negative_text and i == 1)]
        mine = self.split.assign(running) if self.split is not None else running
        runner = self.runner or (_batched if self.batch_guidance else _sequential)
        preds = runner(model, latent, timestep, [conditions[i] for i in mine], out_device, mine, window)
        by_index = dict(zip(mine, preds))
        if self.split is not None:
            by_index = self.split.gather(running, by_index, latent, out_device)
        if self.skip_negative_text:
            by_index[1] = by_index[0]
        return [by_index[i] for i in range(len(conditions))]


def make_passes(batch_guidance: bool = False, skip_negative_text: bool = False) -> GuidancePasses:
    """A ``passes`` function for ``sample_dc_cfg`` (see :class:`GuidancePasses`)."""
    return GuidancePasses(batch_guidance=batch_guidance, skip_negative_text=skip_negative_text)


def as_guidance_passes(passes: Callable[..., list[torch.Tensor]], skip_negative_text: bool) -> GuidancePasses:
    """``passes`` itself when it is a :class:`GuidancePasses`; a plain function (it cannot take a
    step cache's runner) becomes every pass run in turn, without neg_text when ``skip_negative_text``."""
    if isinstance(passes, GuidancePasses):
        return passes
    return GuidancePasses(skip_negative_text=skip_negative_text)
