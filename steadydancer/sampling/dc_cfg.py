"""Decoupled-condition classifier-free guidance (DC-CFG) sampling loop.

Per step idx of N, with c = model(prompt, positive pose), u_txt = model(negative prompt,
positive pose), u_pose = model(prompt, negative pose):

    st < idx/N < end (strict):  v = u_txt + g_txt (c - u_txt) + g_pose (c - u_pose)
    otherwise:                  v = u_txt + g_txt (c - u_txt)          (u_pose not computed)

then one scheduler step. The passes are separate model calls (``run_passes``); a batched
implementation can replace that one function without touching the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..progress import progress as progress_bar
from .batched import DenoiseModel, as_guidance_passes, run_passes
from .conditions import DiTConditions
from .schedulers import make_scheduler

if TYPE_CHECKING:
    from ..models.step_cache import StepCacheOptions


# callback(step_index, timestep (0..1000), latent [16, F, h, w] after the step) -> None, or a
# tensor of the same shape that replaces the latent (diffusers' callback_on_step_end semantics)
StepCallback = Callable[[int, float, torch.Tensor], "torch.Tensor | None"]


def run_step_callback(callback: StepCallback | None, idx: int, t: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """Call the step hook after step ``idx``; its returned tensor (if any) becomes the latent."""
    if callback is None:
        return latent
    out = callback(idx, float(t), latent)
    if out is None:
        return latent
    if out.shape != latent.shape:
        raise ValueError(f"step callback returned a latent of shape {tuple(out.shape)}, expected {tuple(latent.shape)}")
    return out.to(device=latent.device, dtype=latent.dtype)


def pose_cfg_active(idx: int, steps: int, st_cond_cfg: float, end_cond_cfg: float) -> bool:
    """Whether step ``idx`` of ``steps`` runs the negative-pose pass (strict inequalities, as official)."""
    frac = idx / steps
    return st_cond_cfg < frac < end_cond_cfg


def pose_cfg_steps(steps: int, st_cond_cfg: float, end_cond_cfg: float) -> list[int]:
    """Indices of the steps that run the third (negative-pose) pass."""
    return [i for i in range(steps) if pose_cfg_active(i, steps, st_cond_cfg, end_cond_cfg)]


def _reporting_forwards(model: DenoiseModel, bar) -> DenoiseModel:
    """``model`` that shows on ``bar`` which forward pass of the step has just finished: a step
    of the 14B model is 2-3 long passes, and the bar should not look stalled between steps."""
    if bar.disable:
        return model
    step_and_count = [-1, 0]

    def forward(*args, **kwargs):
        out = model(*args, **kwargs)
        if step_and_count[0] != bar.n:
            step_and_count[:] = [bar.n, 0]
        step_and_count[1] += 1
        bar.set_postfix_str(f"pass {step_and_count[1]} of step {bar.n + 1} done")
        return out

    return forward


def combine_guidance(cond: torch.Tensor, uncond_text: torch.Tensor, uncond_pose: torch.Tensor | None,
                     guide_scale: float, condition_guide_scale: float) -> torch.Tensor:
    """DC-CFG combination (same order of operations as the official code)."""
    guided = uncond_text + guide_scale * (cond - uncond_text)
    if uncond_pose is not None:
        guided = guided + condition_guide_scale * (cond - uncond_pose)
    return guided


def sample_dc_cfg(model: DenoiseModel, noise: torch.Tensor, cond: DiTConditions, neg_text: DiTConditions,
                  neg_pose: DiTConditions, solver: str = "unipc", steps: int = 40, shift: float = 5.0,
                  guide_scale: float = 5.0, condition_guide_scale: float = 1.5, st_cond_cfg: float = 0.1,
                  end_cond_cfg: float = 0.4, progress: bool = True, *,
                  device: torch.device | str | None = None, scheduler_device: torch.device | str | None = None,
                  num_train_timesteps: int = 1000,
                  passes: Callable[..., list[torch.Tensor]] = run_passes,
                  on_step: Callable[[int, int, int], None] | None = None,
                  sample_timesteps: Sequence[float] | None = None, solver_seed: int = 0,
                  callback: "StepCallback | None" = None,
                  step_cache: "StepCacheOptions | None" = None) -> torch.Tensor:
    """Run the DC-CFG loop from ``noise`` [16,F,h,w] and return the final latent [16,F,h,w] (float32).

    ``cond``/``neg_text``/``neg_pose`` are DiTConditions with B=1 (prompt + positive pose,
    negative prompt + positive pose, prompt + negative pose), already on the model's device.
    ``device``: where the model runs (default: ``noise.device``). ``scheduler_device``: where the
    guidance and solver arithmetic runs (default: ``device``; the official code uses the CPU
    when it offloads). ``on_step(idx, timestep, passes_run)`` is called after every step.
    ``sample_timesteps``/``solver_seed``: the euler/lcm step list and lcm noise (``make_scheduler``).
    ``callback(idx, timestep, latent)``: see :data:`StepCallback` (the Python API's step hook).
    ``step_cache``: MagCache / first-block cache on ``model``'s blocks for this run, one cache
    context per guidance pass (models/step_cache.py); its summary line is logged at the end.
    """
    if step_cache is not None and step_cache.enabled:
        from ..models.step_cache import step_cache_session

        steps_run = len(sample_timesteps) if sample_timesteps else steps
        passes = as_guidance_passes(passes, skip_negative_text=guide_scale == 1.0)
        with step_cache_session(model, step_cache, steps_run, passes) as (cached, _):
            return sample_dc_cfg(model, noise, cond, neg_text, neg_pose, solver, steps, shift, guide_scale,
                                 condition_guide_scale, st_cond_cfg, end_cond_cfg, progress, device=device,
                                 scheduler_device=scheduler_device, num_train_timesteps=num_train_timesteps,
                                 passes=cached, on_step=on_step, sample_timesteps=sample_timesteps,
                                 solver_seed=solver_seed, callback=callback)
    device = torch.device(device) if device is not None else noise.device
    scheduler_device = torch.device(scheduler_device) if scheduler_device is not None else device
    scheduler, timesteps = make_scheduler(solver, steps, shift, num_train_timesteps, device=device,
                                          sample_timesteps=sample_timesteps, seed=solver_seed)
    latent = noise.to(torch.float32)
    bar = progress_bar(timesteps, disable=not progress, desc="sampling", unit="step")
    model = _reporting_forwards(model, bar)
    for idx, t in enumerate(bar):
        with_pose = pose_cfg_active(idx, len(timesteps), st_cond_cfg, end_cond_cfg)
        condition_sets = [cond, neg_text] + ([neg_pose] if with_pose else [])
        timestep = t.reshape(1).to(device)
        preds = passes(model, latent.to(device), timestep, condition_sets, scheduler_device)
        guided = combine_guidance(preds[0], preds[1], preds[2] if with_pose else None,
                                  guide_scale, condition_guide_scale)
        del preds
        latent = latent.to(scheduler_device)
        latent = scheduler.step(guided[None], t, latent[None], return_dict=False)[0][0]
        if on_step is not None:
            on_step(idx, int(t), len(condition_sets))
        latent = run_step_callback(callback, idx, t, latent)
    return latent
