"""Overlapping context windows over the latent frames: window plans, fusion weights, FreeNoise,
and the windowed DC-CFG loop.

All sizes here are in latent frames (one latent frame = 4 pixel frames after the first). A plan
is the list of window starts of one step; every window has the same length ``window``.

* static plan: starts 0, s, 2s, ... with stride s = window - overlap; the last window is moved
  back to end on the last frame (so it may overlap its neighbour by more).
* uniform plan: the static stride with the interior seams moved back by a per-step offset
  (0, s/2, s/4, 3s/4, ... of the stride: bit-reversed step order), so that seams do not sit on the
  same frames at every step; the first window always starts at 0 and the last ends on the last frame.
* fusion: each window's prediction is weighted per frame and the weights of the windows covering a
  frame are normalised to sum to 1. ``linear``: ramps (i + 1) / (L + 1) up over the overlap of
  length L with the previous window and down over the overlap with the next (two neighbours
  with an overlap of L frames then sum to 1 before normalising); ``pyramid``: a triangle peaking
  in the middle of the window (flat towards the ends of the video).
* FreeNoise: latent frames past the first window take a shuffled copy of the noise of earlier
  frames: frames [start + window, start + window + s) get a random permutation of frames
  [start, start + s) for start = 0, s, 2s, ... (the last block may be shorter).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..progress import progress as progress_bar
from .conditions import DiTConditions
from .dc_cfg import DenoiseModel, StepCallback, combine_guidance, pose_cfg_active, run_passes, run_step_callback
from .schedulers import make_scheduler

SCHEDULES: tuple[str, ...] = ("static", "uniform")
FUSIONS: tuple[str, ...] = ("linear", "pyramid")


def latent_window(frames: int) -> int:
    """Latent frames of a 4n+1-frame pixel window."""
    return (frames - 1) // 4 + 1


def latent_overlap(frames: int) -> int:
    """Latent frames of an overlap of ``frames`` pixel frames (rounded up, at least 1)."""
    return max(1, math.ceil(frames / 4))


def static_windows(num_frames: int, window: int, overlap: int) -> list[int]:
    """Window starts covering ``num_frames`` with windows of ``window`` frames overlapping by >= ``overlap``."""
    if num_frames <= window:
        return [0]
    if not 0 < overlap < window:
        raise ValueError(f"overlap {overlap} must be in [1, {window - 1}] for windows of {window}")
    stride = window - overlap
    starts = list(range(0, num_frames - window, stride))
    return starts + [num_frames - window]


def ordered_halving(step: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, ...: the bits of ``step`` reversed as a binary fraction in [0, 1)."""
    value, scale = 0.0, 0.5
    while step:
        value += scale * (step & 1)
        step >>= 1
        scale /= 2
    return value


def uniform_windows(step: int, num_frames: int, window: int, overlap: int) -> list[int]:
    """The static plan with its interior seams moved back by ``ordered_halving(step)`` of the stride."""
    if num_frames <= window:
        return [0]
    stride = window - overlap
    offset = int(ordered_halving(step) * stride)
    last = num_frames - window
    interior = [k * stride - offset for k in range(1, num_frames) if 0 < k * stride - offset < last]
    return sorted({0, *interior, last})


def window_plan(schedule: str, num_frames: int, window: int, overlap: int) -> Callable[[int], list[int]]:
    """``plan(step) -> starts`` for a schedule name ("static" or "uniform")."""
    if schedule == "static":
        starts = static_windows(num_frames, window, overlap)
        return lambda step: list(starts)
    if schedule == "uniform":
        static_windows(num_frames, window, overlap)  # same argument checks
        return lambda step: uniform_windows(step, num_frames, window, overlap)
    raise ValueError(f"unknown context schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def _raw_weights(starts: Sequence[int], window: int, num_frames: int, fuse: str) -> torch.Tensor:
    weights = torch.ones(len(starts), window, dtype=torch.float64)
    position = torch.arange(window, dtype=torch.float64)
    for k, start in enumerate(starts):
        if fuse == "linear":
            if k > 0:
                ramp_len = starts[k - 1] + window - start
                up = (position + 1) / (ramp_len + 1)
                weights[k] = torch.where(position < ramp_len, torch.minimum(weights[k], up), weights[k])
            if k + 1 < len(starts):
                ramp_len = start + window - starts[k + 1]
                from_end = window - 1 - position
                down = (from_end + 1) / (ramp_len + 1)
                weights[k] = torch.where(from_end < ramp_len, torch.minimum(weights[k], down), weights[k])
        elif fuse == "pyramid":
            peak = (window + 1) // 2
            tri = torch.minimum(position + 1, window - position).clamp(max=peak)
            if start == 0:  # nothing before the video's first frame to blend with
                tri = torch.where(position < window / 2, torch.full_like(tri, peak), tri)
            if start + window == num_frames:
                tri = torch.where(position >= window / 2, torch.full_like(tri, peak), tri)
            weights[k] = tri / peak
        else:
            raise ValueError(f"unknown context fusion {fuse!r}; expected one of {', '.join(FUSIONS)}")
    return weights


def fusion_weights(starts: Sequence[int], window: int, num_frames: int, fuse: str = "linear") -> torch.Tensor:
    """Per-window, per-frame weights [K, window] (float32); over the windows covering a frame they sum to 1."""
    raw = _raw_weights(starts, window, num_frames, fuse)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for k, start in enumerate(starts):
        total[start:start + window] += raw[k]
    if (total <= 0).any():
        raise ValueError(f"windows {list(starts)} of {window} leave frames of {num_frames} uncovered")
    return torch.stack([raw[k] / total[start:start + window] for k, start in enumerate(starts)]).float()


def freenoise_order(num_frames: int, window: int, overlap: int, generator: torch.Generator) -> torch.Tensor:
    """Source frame of every latent frame's noise [num_frames] (int64): identity on the first
    window, then blocks of the stride that are permutations of the block ``window`` frames earlier."""
    order = torch.arange(num_frames)
    stride = window - overlap
    for start in range(0, max(num_frames - window, 0), stride):
        place = start + window
        length = min(stride, num_frames - place)
        perm = torch.randperm(length, generator=generator)
        order[place:place + length] = order[start:start + length][perm]
    return order


def apply_freenoise(noise: torch.Tensor, window: int, overlap: int, seed: int) -> torch.Tensor:
    """``noise`` [C, F, h, w] with frames past the first window replaced as :func:`freenoise_order` says."""
    generator = torch.Generator().manual_seed(seed)
    order = freenoise_order(noise.shape[1], window, overlap, generator)
    return noise[:, order.to(noise.device)]


WindowConditions = Callable[[int], tuple[DiTConditions, DiTConditions, DiTConditions]]


def sample_dc_cfg_windowed(model: DenoiseModel, noise: torch.Tensor, window_conditions: WindowConditions,
                           plan: Callable[[int], list[int]], window: int, fuse: str = "linear",
                           solver: str = "unipc", steps: int = 40, shift: float = 5.0,
                           guide_scale: float = 5.0, condition_guide_scale: float = 1.5,
                           st_cond_cfg: float = 0.1, end_cond_cfg: float = 0.4, progress: bool = True, *,
                           device: torch.device | str | None = None,
                           scheduler_device: torch.device | str | None = None, num_train_timesteps: int = 1000,
                           passes: Callable[..., list[torch.Tensor]] = run_passes,
                           sample_timesteps: Sequence[float] | None = None, solver_seed: int = 0,
                           lcm_noise_order: torch.Tensor | None = None,
                           on_window: Callable[[int, int], None] | None = None,
                           callback: StepCallback | None = None, step_cache=None,
                           _passes_take_window: bool = False) -> torch.Tensor:
    """The DC-CFG loop over context windows; returns the final latent [16, F, h, w] (float32).

    Every step: for each window start a of ``plan(step)``, the DiT sees the latent frames
    [a, a + window) with ``window_conditions(a)`` = (cond, neg_text, neg_pose) for that window;
    the window's guided prediction (DC-CFG with this step's pose window, exactly as
    :func:`sample_dc_cfg`) is weighted by :func:`fusion_weights`, and one solver step is taken on
    the fused whole-video prediction. Only one window's tokens are in the DiT at a time.
    ``lcm_noise_order``: FreeNoise order applied to the lcm solver's fresh noise.
    ``on_window(step, start)`` is called after each window; ``callback`` after each step, as in
    :func:`sample_dc_cfg` (with the whole video's latent). ``step_cache`` (StepCacheOptions):
    as in :func:`sample_dc_cfg`, with one cache context per guidance pass and window start.
    """
    if step_cache is not None and step_cache.enabled:
        from ..models.step_cache import step_cache_session

        steps_run = len(sample_timesteps) if sample_timesteps else steps
        with step_cache_session(model, step_cache, steps_run, passes,
                                skip_negative_text=guide_scale == 1.0) as (cached, _):
            return sample_dc_cfg_windowed(
                model, noise, window_conditions, plan, window, fuse, solver, steps, shift, guide_scale,
                condition_guide_scale, st_cond_cfg, end_cond_cfg, progress, device=device,
                scheduler_device=scheduler_device, num_train_timesteps=num_train_timesteps, passes=cached,
                sample_timesteps=sample_timesteps, solver_seed=solver_seed, lcm_noise_order=lcm_noise_order,
                on_window=on_window, callback=callback, _passes_take_window=True)
    device = torch.device(device) if device is not None else noise.device
    scheduler_device = torch.device(scheduler_device) if scheduler_device is not None else device
    scheduler, timesteps = make_scheduler(solver, steps, shift, num_train_timesteps, device=device,
                                          sample_timesteps=sample_timesteps, seed=solver_seed)
    if lcm_noise_order is not None and hasattr(scheduler, "make_noise"):
        draw = scheduler.make_noise
        scheduler.make_noise = lambda sample: draw(sample)[:, :, lcm_noise_order.to(sample.device)]
    latent = noise.to(torch.float32)
    num_frames = latent.shape[1]
    plans = [plan(i) for i in range(len(timesteps))]
    bar = progress_bar(total=sum(len(p) for p in plans), disable=not progress, desc="sampling (steps x windows)",
               unit="window")
    for idx, t in enumerate(timesteps):
        starts = plans[idx]
        weights = fusion_weights(starts, window, num_frames, fuse).to(scheduler_device)
        with_pose = pose_cfg_active(idx, len(timesteps), st_cond_cfg, end_cond_cfg)
        timestep = t.reshape(1).to(device)
        fused = torch.zeros(latent.shape, dtype=torch.float32, device=scheduler_device)
        for k, start in enumerate(starts):
            cond, neg_text, neg_pose = window_conditions(start)
            condition_sets = [cond, neg_text] + ([neg_pose] if with_pose else [])
            part = latent[:, start:start + window].to(device)
            preds = (passes(model, part, timestep, condition_sets, scheduler_device, window=start)
                     if _passes_take_window else passes(model, part, timestep, condition_sets, scheduler_device))
            guided = combine_guidance(preds[0], preds[1], preds[2] if with_pose else None,
                                      guide_scale, condition_guide_scale)
            del preds, part
            fused[:, start:start + window] += guided.float() * weights[k].view(1, -1, 1, 1)
            del guided
            bar.update(1)
            if on_window is not None:
                on_window(idx, start)
        latent = latent.to(scheduler_device)
        latent = scheduler.step(fused[None], t, latent[None], return_dict=False)[0][0]
        del fused
        latent = run_step_callback(callback, idx, t, latent)
    bar.close()
    return latent
