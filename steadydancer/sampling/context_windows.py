"""Overlapping context windows over the latent frames: window plans, fusion weights, FreeNoise,
and the windowed DC-CFG loop.

All sizes here are in latent frames (one latent frame = 4 pixel frames after the first). A plan
is the list of window starts of one step; every window has the same length ``window``.

* static plan: K = ceil((F - W) / (W - O)) + 1 windows (the fewest whose overlaps are all at
  least O), evenly spaced: start_k = round(k (F - W) / (K - 1)), rounded half up, so that
  neighbouring overlaps differ by at most one frame (Wan2GP and kijai's ``static_standard``
  instead keep the stride W - O and move the last window back, which leaves one large overlap).
* uniform plan: the static plan with all its interior windows shifted together by a per-step
  offset (0, +1, -1, +2, -2, ... in bit-reversed step order) inside the slack that keeps every
  overlap at least O, so seams do not sit on the same frames at every step; the window count
  stays K, the first window starts at 0 and the last ends on the last frame. A plan with no slack
  (W - O divides F - W) stays static.
* fusion: each window's prediction is weighted per frame and the weights of the windows covering a
  frame are normalised to sum to 1. ``linear``: ramps i / L, i = 0..L-1, up over the overlap of
  length L with the previous window and (L - i) / L down over the overlap with the next (two
  neighbours sum to 1); a window that starts after frame 0 thus gives its first latent weight 0,
  as kijai's ``create_window_mask`` (``linspace(0, 1, L)``): that latent stands for one pixel frame
  (the causal VAE's first latent) where the whole video has four. ``pyramid``: a triangle peaking
  in the middle of the window (flat towards the ends of the video), its first latent also 0 after
  frame 0.
* FreeNoise: latent frames past the first window take a shuffled copy of the noise of earlier
  frames: frames [start + window, start + window + s) get a random permutation of frames
  [start, start + s) for start = 0, s, 2s, ... (the last block may be shorter).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..progress import progress as progress_bar
from .batched import DenoiseModel, as_guidance_passes, run_passes
from .conditions import DiTConditions
from .dc_cfg import StepCallback, combine_guidance, pose_cfg_active, run_step_callback
from .schedulers import make_scheduler

SCHEDULES: tuple[str, ...] = ("static", "uniform")
FUSIONS: tuple[str, ...] = ("linear", "pyramid")


def latent_window(frames: int) -> int:
    """Latent frames of a 4n+1-frame pixel window."""
    return (frames - 1) // 4 + 1


def latent_overlap(frames: int) -> int:
    """Latent frames of an overlap of ``frames`` pixel frames (rounded up, at least 1)."""
    return max(1, math.ceil(frames / 4))


def window_count(num_frames: int, window: int, overlap: int) -> int:
    """The fewest windows of ``window`` frames covering ``num_frames`` with overlaps of at least ``overlap``."""
    if num_frames <= window:
        return 1
    if not 0 < overlap < window:
        raise ValueError(f"overlap {overlap} must be in [1, {window - 1}] for windows of {window}")
    return math.ceil((num_frames - window) / (window - overlap)) + 1


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def static_windows(num_frames: int, window: int, overlap: int) -> list[int]:
    """Evenly spaced window starts: start_k = round(k (F - W) / (K - 1)), K = :func:`window_count`."""
    count = window_count(num_frames, window, overlap)
    if count == 1:
        return [0]
    span = num_frames - window
    return [_round_half_up(k * span / (count - 1)) for k in range(count)]


def ordered_halving(step: int) -> float:
    """0, 1/2, 1/4, 3/4, 1/8, ...: the bits of ``step`` reversed as a binary fraction in [0, 1)."""
    value, scale = 0.0, 0.5
    while step:
        value += scale * (step & 1)
        step >>= 1
        scale /= 2
    return value


def uniform_offsets(num_frames: int, window: int, overlap: int) -> tuple[int, int]:
    """(most frames back, most frames forward) the interior windows of the static plan may move
    together with every overlap staying >= ``overlap`` and every start distinct."""
    starts = static_windows(num_frames, window, overlap)
    if len(starts) < 3:
        return 0, 0
    widest = window - overlap
    back = min(widest - (starts[-1] - starts[-2]), starts[1] - 1)
    forward = min(widest - starts[1], (starts[-1] - 1) - starts[-2])
    return max(back, 0), max(forward, 0)


def uniform_windows(step: int, num_frames: int, window: int, overlap: int) -> list[int]:
    """The static plan with its interior windows shifted together by this step's offset
    (0, +1, -1, +2, -2, ... picked by ``ordered_halving(step)``, within :func:`uniform_offsets`)."""
    starts = static_windows(num_frames, window, overlap)
    back, forward = uniform_offsets(num_frames, window, overlap)
    choices = [0] + [v for d in range(1, max(back, forward) + 1) for v in (d, -d) if -back <= v <= forward]
    offset = choices[int(ordered_halving(step) * len(choices))]
    return [starts[0], *(a + offset for a in starts[1:-1]), starts[-1]]


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
                up = position / ramp_len
                weights[k] = torch.where(position < ramp_len, torch.minimum(weights[k], up), weights[k])
            if k + 1 < len(starts):
                ramp_len = start + window - starts[k + 1]
                from_end = window - 1 - position
                down = (from_end + 1) / ramp_len
                weights[k] = torch.where(from_end < ramp_len, torch.minimum(weights[k], down), weights[k])
        elif fuse == "pyramid":
            peak = (window + 1) // 2
            tri = torch.minimum(position + 1, window - position).clamp(max=peak)
            if start == 0:  # nothing before the video's first frame to blend with
                tri = torch.where(position < window / 2, torch.full_like(tri, peak), tri)
            else:  # the one-frame first latent (see the module doc)
                tri[0] = 0
            if start + window == num_frames:
                tri = torch.where(position >= window / 2, torch.full_like(tri, peak), tri)
            weights[k] = tri / peak
        else:
            raise ValueError(f"unknown context fusion {fuse!r}; expected one of {', '.join(FUSIONS)}")
    return weights


def fusion_weights(starts: Sequence[int], window: int, num_frames: int, fuse: str = "linear") -> torch.Tensor:
    """Per-window, per-frame weights [K, window] (float32); over the windows covering a frame they
    sum to 1; the first latent of a window starting after frame 0 gets 0 (see the module doc)."""
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
        passes = as_guidance_passes(passes, skip_negative_text=guide_scale == 1.0)
        with step_cache_session(model, step_cache, steps_run, passes) as (cached, _):
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
