"""Videos longer than one DiT window: overlapping context windows (``context``) or chained
windows (``chain``), with streamed VAE decode and mp4 writing. See docs/long_video.md.

Per window the DiT sees (``context`` mode; window = latent frames [a, a + W)):

* latents: the whole video's latent frames [a, a + W) (the noise has FreeNoise applied);
* pose latents: the window's own pixel frames [4a, 4a + 4(W - 1)] encoded on their own, so the
  window's first latent frame is a one-frame latent as the causal VAE makes it (frames past the
  first cover the same 4 pixel frames as the whole video's latent);
* image condition: window a = 0 gets the I2V first-frame mask and the encoded (reference image,
  zeros ...) clip, exactly as a one-window run; every later window gets a zero mask and the
  encoded all-zero clip: no frame of it is known, so the reference is not painted again at each
  window start;
* ref_x (reference image latent), ref_c (first pose frame latent), both CLIP features and the
  text contexts: the whole video's, identical in every window (they tie appearance to the
  reference, not to a time).

``chain`` mode runs one window after another, each a complete one-window generation whose I2V
first frame is a frame of the previous window (the first of their overlap); the overlap is
cross-faded in pixels, and ``color_match`` moves each window's Lab mean/std to the reference's.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..options import MODES, LongVideoOptions, check_long_video_options
from ..progress import progress as progress_bar
from ..sampling import DiTConditions, sample_dc_cfg
from ..sampling.schedulers import lcm_noise_seed
from ..sampling.context_windows import (apply_freenoise, freenoise_order, latent_overlap,
                                        latent_window, sample_dc_cfg_windowed, static_windows, window_plan)
from . import config as C
from .i2v import resolve_seed
from .inputs import LazyFrames, first_frame_mask, latent_size, load_image, pil_to_tensor, resize_bicubic

if TYPE_CHECKING:
    from ..sampling.dc_cfg import StepCallback
    from ..options import SamplingOptions
    from .i2v import DancerPipeline

log = logging.getLogger(__name__)


def chain_starts(frame_num: int, window: int, overlap: int) -> list[int]:
    """First pixel frame of each chained window; the last is moved back to end on the last frame."""
    return static_windows(frame_num, window, overlap)


def context_pixel_starts(latent_starts: Sequence[int]) -> list[int]:
    """First pixel frame of each context window (latent frame a starts at pixel frame 4a)."""
    return [C.VAE_STRIDE[0] * a for a in latent_starts]


def describe_plan(frame_num: int, options: LongVideoOptions) -> str:
    """One log line with the window plan (pixel frames)."""
    window = options.context_frames
    if options.mode == "chain":
        starts = chain_starts(frame_num, window, options.context_overlap)
        detail = f"overlap {options.context_overlap}, color match {'on' if options.color_match else 'off'}"
    else:
        lat_f = latent_window(frame_num)
        starts = context_pixel_starts(static_windows(lat_f, options.latent_window, options.latent_overlap))
        detail = (f"overlap {options.latent_overlap} latent frames, {options.schedule} schedule, "
                  f"{options.fuse} fusion, FreeNoise {'on' if options.freenoise else 'off'}")
    spans = ", ".join(f"{s}-{s + window - 1}" for s in starts)
    return f"{options.mode} windows: {frame_num} frames in {len(starts)} windows of {window} [{spans}]; {detail}"


def plan_diagram(frame_num: int, options: LongVideoOptions, width: int = 72) -> str:
    """ASCII picture of the (static) window plan: one row per window over the pixel frame axis."""
    window = options.context_frames
    if options.mode == "chain":
        starts = chain_starts(frame_num, window, options.context_overlap)
    else:
        starts = context_pixel_starts(static_windows(latent_window(frame_num), options.latent_window,
                                                     options.latent_overlap))
    scale = width / frame_num
    lines = [f"frames 0..{frame_num - 1} ({options.mode}, window {window}, overlap {options.context_overlap})"]
    for k, start in enumerate(starts):
        left, right = int(start * scale), max(int((start + window) * scale), int(start * scale) + 1)
        lines.append(f"w{k:<2d} {' ' * left}{'#' * (right - left)}{' ' * (width - right)} {start}-{start + window - 1}")
    return "\n".join(lines)


class PoseFrames(LazyFrames):
    """Pose frames 0000.jpg ... of a folder, read from disk (and PIL-bicubic-resized to ``size``)
    only when indexed, so a long video's frames are never all in memory."""

    def __init__(self, folder: str | os.PathLike, count: int, size: tuple[int, int]) -> None:
        self.folder, self.count, self.size = Path(folder), count, size

    def frame(self, index: int) -> Image.Image:
        image = load_image(self.folder / f"{index:04d}.jpg", "pose frame")
        return image.resize(self.size, Image.Resampling.BICUBIC)


# -- the parts every window shares ----------------------------------------------------------------

@dataclass
class SharedConditions:
    """What is computed once per video: sizes, noise generator, text, CLIP, ref_x, ref_c, first frame."""

    h: int
    w: int
    lat_h: int
    lat_w: int
    seed: int
    generator: torch.Generator
    context: torch.Tensor
    context_null: torch.Tensor
    clip_x: torch.Tensor
    clip_c: torch.Tensor
    ref_x: torch.Tensor  # [36, 1, lat_h, lat_w]
    ref_c: torch.Tensor  # [36, 1, lat_h, lat_w]
    first: torch.Tensor  # reference image resized to (h, w): [3, 1, h, w] in [-1, 1]

    def conditions(self, y: torch.Tensor, pose_pos: torch.Tensor, pose_neg: torch.Tensor):
        """(cond, neg_text, neg_pose) DiTConditions (B = 1) of one window."""
        def one(text: torch.Tensor, pose: torch.Tensor) -> DiTConditions:
            return DiTConditions(text_context=text[None], clip_image=self.clip_x[None], clip_pose=self.clip_c[None],
                                 image_cond=y[None], pose_latents=pose[None], ref_image=self.ref_x[None],
                                 ref_pose=self.ref_c[None])

        return one(self.context, pose_pos), one(self.context_null, pose_pos), one(self.context, pose_neg)


def prepare_shared(pipeline: "DancerPipeline", image: Image.Image, pose_first: Image.Image, prompt: str,
                   max_area: int, frame_num: int, seed: int, negative_prompt: str | None) -> SharedConditions:
    """The steps of ``DancerPipeline.generate`` before the per-window parts (same order, same seed use)."""
    device = pipeline.device
    img, img_c = pil_to_tensor(image), pil_to_tensor(pose_first)
    height, width = img.shape[1:]
    lat_h, lat_w = latent_size(height, width, max_area, pipeline.patch_size[1:], C.VAE_STRIDE[1:])
    h, w = lat_h * C.VAE_STRIDE[1], lat_w * C.VAE_STRIDE[2]
    log.info("reference %dx%d -> video %dx%d, %d frames (%d latent frames of %dx%d)",
             width, height, w, h, frame_num, latent_window(frame_num), lat_w, lat_h)
    seed = resolve_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    context, context_null = pipeline.encode_text(prompt, negative_prompt or C.NEGATIVE_PROMPT)
    clip_x, clip_c = pipeline.encode_clip(img, img_c)
    first = resize_bicubic(img[None], h, w)
    ref_x = pipeline.encode_video(first)
    ref_x = torch.cat([ref_x, torch.ones(4, 1, lat_h, lat_w, device=device), ref_x])
    ref_c = pipeline.encode_video(resize_bicubic(img_c[None], h, w))
    ref_c = torch.cat([ref_c, torch.zeros(4, 1, lat_h, lat_w, device=device), ref_c])
    return SharedConditions(h, w, lat_h, lat_w, seed, generator, context, context_null, clip_x, clip_c,
                            ref_x, ref_c, first)


def encode_pose_clip(pipeline: "DancerPipeline", frames: Sequence[Image.Image], h: int, w: int) -> torch.Tensor:
    """Pose frames (PIL, at the reference size) encoded on their own -> latent [16, f, h/8, w/8]."""
    return pipeline.encode_video(resize_bicubic(torch.stack([pil_to_tensor(f) for f in frames]), h, w),
                                 desc="VAE encode pose frames")


def image_condition(pipeline: "DancerPipeline", first_frame: torch.Tensor | None, frames: int,
                    shared: SharedConditions) -> torch.Tensor:
    """y [20, f, lat_h, lat_w]: first-frame mask + latent of (first_frame, zeros...); with
    ``first_frame`` None a zero mask and the latent of an all-zero clip (no frame known)."""
    mask = first_frame_mask(frames, shared.lat_h, shared.lat_w, device=pipeline.device)
    zeros = torch.zeros(3, frames - (first_frame is not None), shared.h, shared.w)
    if first_frame is None:
        return torch.cat([torch.zeros_like(mask), pipeline.encode_video(zeros, desc="VAE encode image condition")])
    return torch.cat([mask, pipeline.encode_video(torch.cat([first_frame.cpu(), zeros], dim=1),
                                                  desc="VAE encode image condition")])


class ContextWindowConditions:
    """``window(a)`` -> (cond, neg_text, neg_pose) of the context window starting at latent frame a
    (the module doc says what each holds). Per-window pose latents are encoded once and kept on
    ``store`` (the CPU when the pipeline offloads)."""

    def __init__(self, pipeline: "DancerPipeline", shared: SharedConditions, positive: Sequence[Image.Image],
                 negative: Sequence[Image.Image], window_frames: int) -> None:
        self.pipeline, self.shared = pipeline, shared
        self.positive, self.negative = positive, negative
        self.window_frames = window_frames
        self.store = pipeline.offload_device
        self._first_y: torch.Tensor | None = None
        self._mid_y: torch.Tensor | None = None
        self._pose: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pixel_range(self, start: int) -> range:
        """Pixel frames of the window starting at latent frame ``start``."""
        first = C.VAE_STRIDE[0] * start
        return range(first, first + self.window_frames)

    def image_condition(self, start: int) -> torch.Tensor:
        if start == 0:
            if self._first_y is None:
                self._first_y = image_condition(self.pipeline, self.shared.first, self.window_frames, self.shared)
            return self._first_y
        if self._mid_y is None:
            self._mid_y = image_condition(self.pipeline, None, self.window_frames, self.shared)
        return self._mid_y

    def pose_latents(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        if start not in self._pose:
            frames = self.pixel_range(start)
            shared = self.shared
            pos = encode_pose_clip(self.pipeline, self.positive[frames.start:frames.stop], shared.h, shared.w)
            neg = encode_pose_clip(self.pipeline, self.negative[frames.start:frames.stop], shared.h, shared.w)
            self._pose[start] = (pos.to(self.store), neg.to(self.store))
        return self._pose[start]

    def window(self, start: int) -> tuple[DiTConditions, DiTConditions, DiTConditions]:
        pos, neg = self.pose_latents(start)
        device = self.pipeline.device
        return self.shared.conditions(self.image_condition(start), pos.to(device), neg.to(device))


@contextmanager
def dit_session(pipeline: "DancerPipeline"):
    """The DiT on its device under the pipeline's autocast; offloaded afterwards as ``generate`` does."""
    dit = pipeline.dit()
    if getattr(dit, "block_swap", None) is None:
        dit = dit.to(pipeline.device)
    if pipeline.offload_model and pipeline.on_gpu:
        torch.cuda.empty_cache()
    autocast = (torch.autocast(pipeline.device.type, dtype=pipeline.dit_dtype)
                if pipeline.on_gpu and pipeline.dit_dtype != torch.float32 else nullcontext())
    with autocast:
        yield dit
    if pipeline.offload_model and pipeline.on_gpu:
        if pipeline.keep_models and getattr(dit, "block_swap", None) is None:
            dit.to("cpu")
        else:
            pipeline._dit = None
        del dit
        gc.collect()
        torch.cuda.empty_cache()


def _sampler_kwargs(pipeline: "DancerPipeline", sampling: "SamplingOptions", seed: int, progress: bool) -> dict:
    from ..models.memory import sampler_passes

    return dict(solver=sampling.solver, steps=sampling.steps, shift=sampling.shift,
                guide_scale=sampling.guide_scale, condition_guide_scale=sampling.condition_guide_scale,
                st_cond_cfg=sampling.st_cond_cfg, end_cond_cfg=sampling.end_cond_cfg, progress=progress,
                device=pipeline.device, scheduler_device=pipeline.offload_device,
                num_train_timesteps=C.NUM_TRAIN_TIMESTEPS,
                passes=sampler_passes(pipeline.memory, sampling.guide_scale),
                sample_timesteps=sampling.timesteps, solver_seed=lcm_noise_seed(seed),
                step_cache=pipeline.memory.step_cache_options())


def to_uint8_frames(video: torch.Tensor) -> Iterator[np.ndarray]:
    """[3, n, H, W] in [-1, 1] -> uint8 [H, W, 3] frames, scaled and truncated as the official writer."""
    frames = video.clamp(-1, 1).add(1).div(2).mul(255).to(torch.uint8).permute(1, 2, 3, 0).cpu()
    for frame in frames:
        yield frame.numpy()


# -- context mode ----------------------------------------------------------------------------------

def sample_context(pipeline: "DancerPipeline", image: Image.Image, pose_first: Image.Image,
                   positive: Sequence[Image.Image], negative: Sequence[Image.Image], prompt: str, max_area: int,
                   frame_num: int, sampling: "SamplingOptions", options: LongVideoOptions, seed: int = -1,
                   negative_prompt: str | None = None, progress: bool = True,
                   callback: "StepCallback | None" = None) -> torch.Tensor:
    """The final latent [16, F, lat_h, lat_w] of a context-window run (every rank under torchrun).

    ``callback(idx, timestep, latent)`` after each step, with the whole video's latent.
    """
    shared = prepare_shared(pipeline, image, pose_first, prompt, max_area, frame_num, seed, negative_prompt)
    lat_f = latent_window(frame_num)
    window, overlap = options.latent_window, options.latent_overlap
    log.info(describe_plan(frame_num, options))
    noise = torch.randn(16, lat_f, shared.lat_h, shared.lat_w, dtype=torch.float32, generator=shared.generator,
                        device=pipeline.device)
    order = None
    if options.freenoise:
        noise = apply_freenoise(noise, window, overlap, shared.seed)
        order = freenoise_order(lat_f, window, overlap, torch.Generator().manual_seed(shared.seed))
    conditions = ContextWindowConditions(pipeline, shared, positive, negative, options.context_frames)
    plan = window_plan(options.schedule, lat_f, window, overlap)
    for start in sorted({a for step in range(_step_count(sampling)) for a in plan(step)}):
        conditions.pose_latents(start)  # all VAE encoding before the DiT loads
        conditions.image_condition(start)
    with dit_session(pipeline) as dit:
        return sample_dc_cfg_windowed(dit, noise, conditions.window, plan, window, options.fuse,
                                      lcm_noise_order=order, callback=callback,
                                      **_sampler_kwargs(pipeline, sampling, shared.seed, progress))


def _step_count(sampling: "SamplingOptions") -> int:
    return len(sampling.timesteps) if sampling.timesteps else sampling.steps


def context_video_frames(pipeline: "DancerPipeline", *args, emit: bool = True, **kwargs) -> Iterator[np.ndarray]:
    """uint8 frames of a context-window run (arguments of :func:`sample_context`), decoded by a
    streamed VAE pass; with ``emit`` False (torchrun ranks > 0) it samples and yields nothing."""
    latent = sample_context(pipeline, *args, **kwargs)
    if not emit:
        return
    frames = 4 * (latent.shape[1] - 1) + 1
    log.info("VAE: decoding %d frames into the mp4 (streamed)", frames)
    with progress_bar(total=frames, desc="VAE decode", unit="frame") as bar:
        for chunk in pipeline.vae().decode_stream(latent):
            bar.update(chunk.shape[1])
            yield from to_uint8_frames(chunk)


# -- chain mode ------------------------------------------------------------------------------------

def lab_stats(video: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) in CIE Lab of [3, n, H, W] RGB in [-1, 1] (all frames together)."""
    lab = _to_lab(video)
    return lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)


def _to_lab(video: torch.Tensor) -> np.ndarray:
    import cv2

    rgb = video.clamp(-1, 1).add(1).div(2).permute(1, 2, 3, 0).contiguous().numpy().astype(np.float32)
    return np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2LAB) for frame in rgb])


def color_match(video: torch.Tensor, target: tuple[np.ndarray, np.ndarray], eps: float = 1e-6) -> torch.Tensor:
    """Move ``video`` [3, n, H, W] (RGB in [-1, 1]) so its Lab mean/std per channel equal ``target``'s.

    One transform for the whole window (statistics over all its frames), so it adds no flicker.
    """
    import cv2

    lab = _to_lab(video)
    mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    lab = (lab - mean) * (target[1] / np.maximum(std, eps)) + target[0]
    rgb = np.stack([cv2.cvtColor(frame.astype(np.float32), cv2.COLOR_LAB2RGB) for frame in lab])
    return torch.from_numpy(rgb).permute(3, 0, 1, 2).mul(2).sub(1).clamp(-1, 1).to(video.dtype)


def crossfade(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Blend two takes of the same L frames [3, L, H, W]: weight (i + 1) / (L + 1) on ``current``."""
    length = previous.shape[1]
    alpha = torch.arange(1, length + 1, dtype=previous.dtype).div(length + 1).view(1, -1, 1, 1)
    return previous * (1 - alpha) + current * alpha


def chain_video_frames(pipeline: "DancerPipeline", image: Image.Image, pose_first: Image.Image,
                       positive: Sequence[Image.Image], negative: Sequence[Image.Image], prompt: str,
                       max_area: int, frame_num: int, sampling: "SamplingOptions", options: LongVideoOptions,
                       seed: int = -1, negative_prompt: str | None = None, progress: bool = True,
                       emit: bool = True,
                       on_window: Callable[[int, int, tuple], None] | None = None,
                       callback: "StepCallback | None" = None) -> Iterator[np.ndarray]:
    """uint8 frames of a chained run, window after window (only one window's float frames held).

    Window k covers pixel frames [s_k, s_k + W): its I2V first frame is the reference image (k = 0)
    or the previous window's frame s_k; its pose latents are its own frames encoded on their own;
    ref_x, ref_c, CLIP and text are the video's. Every rank decodes each window (the next window's
    first frame needs it); only ``emit`` ranks yield frames. ``on_window(k, start, conditions)``
    sees each window's (cond, neg_text, neg_pose) before sampling (tests). ``callback(idx, timestep,
    latent)`` after each step of each window, ``idx`` counted over all windows (k * steps + step).
    """
    shared = prepare_shared(pipeline, image, pose_first, prompt, max_area, frame_num, seed, negative_prompt)
    window = options.context_frames
    starts = chain_starts(frame_num, window, options.context_overlap)
    log.info(describe_plan(frame_num, options))
    target = lab_stats(shared.first) if options.color_match else None
    vae = pipeline.vae()
    tail: torch.Tensor | None = None  # frames of the previous window from the current start on, not yet written
    first_frame = shared.first
    bar = progress_bar(total=len(starts) * _step_count(sampling), disable=not progress, desc="sampling (windows x steps)",
               unit="step")
    # One DiT session for the whole chain: the DiT stays on its device while each window is decoded
    # (offloading it between windows would move or reload the whole model every window).
    with dit_session(pipeline) as dit:
        for k, start in enumerate(starts):
            y = image_condition(pipeline, first_frame, window, shared)
            pos = encode_pose_clip(pipeline, positive[start:start + window], shared.h, shared.w)
            neg = encode_pose_clip(pipeline, negative[start:start + window], shared.h, shared.w)
            conditions = shared.conditions(y, pos, neg)
            if on_window is not None:
                on_window(k, start, conditions)
            noise = torch.randn(16, latent_window(window), shared.lat_h, shared.lat_w, dtype=torch.float32,
                                generator=shared.generator, device=pipeline.device)
            log.info("chain window %d/%d: frames %d-%d", k + 1, len(starts), start, start + window - 1)
            window_callback = None
            if callback is not None:
                def window_callback(idx, t, lat, k=k):
                    return callback(k * _step_count(sampling) + idx, t, lat)
            latent = sample_dc_cfg(dit, noise, *conditions, on_step=lambda *_: bar.update(1),
                                   callback=window_callback,
                                   **_sampler_kwargs(pipeline, sampling, shared.seed + k, progress=False))
            del conditions, y, pos, neg, noise
            video = vae.decode(latent.to(pipeline.device), desc=f"VAE decode window {k + 1}").cpu()
            del latent
            if target is not None:
                video = color_match(video, target)
            if tail is not None:
                overlap = tail.shape[1]
                video[:, :overlap] = crossfade(tail, video[:, :overlap])
            end = starts[k + 1] - start if k + 1 < len(starts) else window
            if emit:
                yield from to_uint8_frames(video[:, :end])
            tail = video[:, end:].clone() if k + 1 < len(starts) else None
            if tail is not None:
                first_frame = tail[:, :1].clone()
            del video
    bar.close()


def long_video_frames(pipeline: "DancerPipeline", *args, options: LongVideoOptions, emit: bool = True,
                      **kwargs) -> Iterator[np.ndarray]:
    """Frames of a windowed run in ``options.mode`` (arguments of :func:`sample_context`)."""
    check_long_video_options(options)
    if options.mode == "chain":
        return chain_video_frames(pipeline, *args, options=options, emit=emit, **kwargs)
    return context_video_frames(pipeline, *args, options=options, emit=emit, **kwargs)


def generate_long_video_file(pipeline: "DancerPipeline", *, image: str | os.PathLike,
                             cond_pos_folder: str | os.PathLike, cond_neg_folder: str | os.PathLike, prompt: str,
                             save_file: str | os.PathLike | None, max_area: int, frame_num: int,
                             sampling: "SamplingOptions", options: LongVideoOptions, seed: int = -1,
                             negative_prompt: str | None = None, progress: bool = True, emit: bool = True,
                             started: float | None = None) -> Path | None:
    """A windowed run from files to the mp4 (inputs already checked). Pose frames are read from
    disk per window; ``emit`` False (torchrun ranks > 0): run every window, write nothing, None."""
    check_long_video_options(options)
    started = time.perf_counter() if started is None else started
    reference = load_image(image)
    positive = PoseFrames(cond_pos_folder, frame_num, reference.size)
    negative = PoseFrames(cond_neg_folder, frame_num, reference.size)
    frames = long_video_frames(pipeline, reference, positive[0], positive, negative, prompt, max_area, frame_num,
                               sampling, options=options, seed=seed, negative_prompt=negative_prompt,
                               progress=progress, emit=emit)
    if not emit:
        for _ in frames:
            pass
        return None
    return write_frames(frames, save_file, started)


def write_frames(frames: Iterator[np.ndarray], save_file: str | os.PathLike, started: float) -> Path:
    """Stream uint8 frames into the mp4 (16 fps, atomic: nothing appears unless complete)."""
    from ..pose.video import write_video

    count = write_video(save_file, frames, fps=C.SAMPLE_FPS)
    log.info("saved %d frames (%d fps) to %s in %.1f s", count, C.SAMPLE_FPS, save_file, time.perf_counter() - started)
    return Path(save_file)
