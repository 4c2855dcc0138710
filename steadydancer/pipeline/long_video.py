"""Videos longer than one DiT window: overlapping context windows (``context``) or chained
windows (``chain``), with streamed VAE decode and mp4 writing. See docs/long_video.md.

Both pose streams (positive, negative) are VAE-encoded once for the whole video, streamed chunk
by chunk, and kept on the host (:class:`PoseLatentCache`). A window starting at pixel frame 4a
takes the whole video's latent frames [a, a + W) with its first latent replaced by a one-frame
encode of pixel frame 4a: the causal VAE makes a clip's first latent from one frame, and that is
what the model reads there (kijai's wrapper slices one whole-video encode the same way).

Per window the DiT sees (``context`` mode; window = latent frames [a, a + W)):

* latents: the whole video's latent frames [a, a + W) (the noise has FreeNoise applied);
* pose latents: as above;
* image condition (``context_image``): ``first`` (default): window a = 0 gets the I2V first-frame
  mask and the encoded (reference image, zeros ...) clip, exactly as a one-window run, every later
  window a zero mask and the encoded all-zero clip; ``every``: every window gets window 0's (the
  reference as a known first frame, as kijai's context windows); ``none``: no window does;
* ref_x (reference image latent), ref_c (first pose frame latent), both CLIP features and the
  text contexts: the whole video's, identical in every window.

``chain`` mode runs one window after another, each a complete generation: window k > 0 is
handed the previous window's last ``chain_overlap`` decoded frames as known frames (mask 1 on
their latents, their encoding in the image condition), and its own copies of them are dropped
after decoding (``chain_blend`` ``crossfade``: blended instead); the last window is shortened to
end on the last frame. ``color_match`` moves each window after the first towards the colours of
the previous window's handover frames.
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

from ..options import FLAG_NAMES, LongVideoOptions, check_long_video_options
from ..progress import progress as progress_bar
from ..sampling import DiTConditions, sample_dc_cfg
from ..sampling.schedulers import lcm_noise_seed
from ..sampling.context_windows import (apply_freenoise, freenoise_order,
                                        latent_window, sample_dc_cfg_windowed, static_windows, uniform_offsets,
                                        window_plan)
from . import config as C
from .i2v import resolve_seed
from .inputs import LazyFrames, latent_size, load_image, pil_to_tensor, resize_bicubic

if TYPE_CHECKING:
    from ..sampling.dc_cfg import StepCallback
    from ..options import SamplingOptions
    from .i2v import DancerPipeline

log = logging.getLogger(__name__)


# setting -> (its default, the mode it acts in); a changed setting in the other mode is reported
_MODE_SETTINGS = {"context_overlap": "context", "schedule": "context", "fuse": "context", "freenoise": "context",
                  "context_image": "context", "chain_overlap": "chain", "chain_blend": "chain",
                  "color_match": "chain"}


def ignored_settings(options: LongVideoOptions, names: dict[str, str] = FLAG_NAMES) -> list[str]:
    """One line per setting changed from its default that does nothing in ``options.mode``."""
    defaults = LongVideoOptions()
    lines = []
    for key, mode in _MODE_SETTINGS.items():
        if mode != options.mode and getattr(options, key) != getattr(defaults, key):
            lines.append(f"{names.get(key, key)} does nothing in {options.mode} mode (it is a {mode}-mode setting)")
    return lines


def chain_windows(frame_num: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """(first pixel frame, frames) of each chained window: starts k (window - overlap), every window
    ``window`` frames but the last, which is shortened to end on the last frame (never an extra
    window). With 4n+1 sizes every start is a multiple of 4 and every length 4n+1."""
    if frame_num <= window:
        return [(0, frame_num)]
    stride = window - overlap
    count = -(-(frame_num - window) // stride) + 1
    return [(k * stride, min(window, frame_num - k * stride)) for k in range(count)]


def chain_starts(frame_num: int, window: int, overlap: int) -> list[int]:
    """First pixel frame of each chained window (:func:`chain_windows`)."""
    return [start for start, _ in chain_windows(frame_num, window, overlap)]


def context_pixel_starts(latent_starts: Sequence[int]) -> list[int]:
    """First pixel frame of each context window (latent frame a starts at pixel frame 4a)."""
    return [C.VAE_STRIDE[0] * a for a in latent_starts]


def _plan_spans(frame_num: int, options: LongVideoOptions) -> list[tuple[int, int]]:
    if options.mode == "chain":
        return chain_windows(frame_num, options.context_frames, options.chain_overlap)
    starts = context_pixel_starts(static_windows(latent_window(frame_num), options.latent_window,
                                                 options.latent_overlap))
    return [(s, options.context_frames) for s in starts]


def describe_plan(frame_num: int, options: LongVideoOptions) -> str:
    """One log line with the window plan (pixel frames)."""
    window = options.context_frames
    if options.mode == "chain":
        detail = (f"handover {options.chain_overlap} frames ({options.chain_blend}), "
                  f"color match {options.color_match:g}")
    else:
        detail = (f"overlap {options.latent_overlap} latent frames, {options.schedule} schedule, "
                  f"{options.fuse} fusion, FreeNoise {'on' if options.freenoise else 'off'}, "
                  f"--context_image {options.context_image}")
    spans_list = _plan_spans(frame_num, options)
    spans = ", ".join(f"{s}-{s + n - 1}" for s, n in spans_list)
    return (f"{options.mode} windows: {frame_num} frames in {len(spans_list)} windows of {window} [{spans}]; "
            f"{detail}")


def plan_diagram(frame_num: int, options: LongVideoOptions, width: int = 72) -> str:
    """ASCII picture of the (static) window plan: one row per window over the pixel frame axis."""
    scale = width / frame_num
    overlap = options.chain_overlap if options.mode == "chain" else options.context_overlap
    lines = [f"frames 0..{frame_num - 1} ({options.mode}, window {options.context_frames}, overlap {overlap})"]
    for k, (start, frames) in enumerate(_plan_spans(frame_num, options)):
        left, right = int(start * scale), max(int((start + frames) * scale), int(start * scale) + 1)
        lines.append(f"w{k:<2d} {' ' * left}{'#' * (right - left)}{' ' * (width - right)} {start}-{start + frames - 1}")
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


def encode_frames_streamed(pipeline: "DancerPipeline", frames: Sequence[Image.Image], h: int, w: int,
                           desc: str | None = None, count: int | None = None) -> torch.Tensor:
    """:func:`encode_pose_clip` of the first ``count`` (default all, 4n+1) ``frames`` with only one
    causal chunk (1, then 4 frames) read, resized and on the device at a time -> latent
    [16, n+1, h/8, w/8] on the CPU.

    The Wan VAE encodes chunk by chunk with a conv cache anyway (diffusers' ``_encode``); here the
    chunks are indexed from ``frames`` (a lazy :class:`PoseFrames` reads them from disk) one by one,
    so a long video is never all in memory, neither as images nor as one float tensor.
    """
    vae = pipeline.vae()
    model = vae.model
    count = len(frames) if count is None else count
    if count % 4 != 1:
        raise ValueError(f"the Wan VAE encodes 4n+1 frames, got {count}")
    if getattr(model, "use_tiling", False) or getattr(model.config, "patch_size", None) is not None:
        return encode_pose_clip(pipeline, frames[:count], h, w).cpu()  # layouts the chunk loop below does not cover
    bounds = [(0, 1)] + [(1 + 4 * i, 5 + 4 * i) for i in range((count - 1) // 4)]
    latents = []
    model.clear_cache()
    try:
        with torch.no_grad(), vae._autocast(), progress_bar(total=count, desc=desc or "VAE encode",
                                                             unit="frame", disable=desc is None) as bar:
            for lo, hi in bounds:
                chunk = resize_bicubic(torch.stack([pil_to_tensor(f) for f in frames[lo:hi]]), h, w)
                model._enc_conv_idx = [0]
                out = model.encoder(chunk[None].to(vae.device, torch.float32), feat_cache=model._enc_feat_map,
                                    feat_idx=model._enc_conv_idx)
                moments = model.quant_conv(out)  # a 1x1x1 conv: chunk by chunk equals the whole
                mean = moments[:, :moments.shape[1] // 2].float()[0]
                latents.append(((mean - vae.mean) * vae.inv_std).cpu())
                bar.update(hi - lo)
    finally:
        model.clear_cache()
    return torch.cat(latents, dim=1)


class PoseLatentCache:
    """Both pose streams encoded once for the whole video and kept on the host.

    :meth:`window` (first pixel frame 4a, 4n+1 frames) -> (positive, negative) latents [16, f, ...]:
    the whole video's latent frames [a, a + f) with the first replaced, for a > 0, by the one-frame
    encode of pixel frame 4a (cached per start). VAE work: one pass over the video per stream plus
    one frame per distinct window start.
    """

    def __init__(self, pipeline: "DancerPipeline", positive: Sequence[Image.Image], negative: Sequence[Image.Image],
                 frame_num: int, h: int, w: int) -> None:
        self.pipeline, self.positive, self.negative, self.h, self.w = pipeline, positive, negative, h, w
        log.info("VAE: encoding the %d pose frames of each stream once", frame_num)
        self.whole = (encode_frames_streamed(pipeline, positive, h, w, "VAE encode positive poses", frame_num),
                      encode_frames_streamed(pipeline, negative, h, w, "VAE encode negative poses", frame_num))
        self._first: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def first_latents(self, pixel_start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One-frame encodes [16, 1, ...] of pixel frame ``pixel_start`` of both streams (host)."""
        if pixel_start not in self._first:
            self._first[pixel_start] = tuple(
                encode_pose_clip(self.pipeline, [frames[pixel_start]], self.h, self.w).cpu()
                for frames in (self.positive, self.negative))
        return self._first[pixel_start]

    def window(self, pixel_start: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        if pixel_start % C.VAE_STRIDE[0]:
            raise ValueError(f"windows start on a latent frame (a multiple of 4), not pixel frame {pixel_start}")
        first, count = pixel_start // C.VAE_STRIDE[0], latent_window(frames)
        parts = [latent[:, first:first + count] for latent in self.whole]
        if first == 0:
            return parts[0], parts[1]
        return tuple(torch.cat([one, part[:, 1:]], dim=1) for one, part in zip(self.first_latents(pixel_start), parts))


def known_frames_mask(frames: int, known: int, lat_h: int, lat_w: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """I2V mask [4, F_lat, lat_h, lat_w]: 1 on the latents of the first ``known`` pixel frames
    (``known`` = 1: the official first-frame mask; 0: none known)."""
    mask = torch.zeros(1, frames, lat_h, lat_w, device=device)
    mask[:, :known] = 1
    # the first pixel frame stands for 4 slots, so the frame axis packs evenly into groups of 4
    mask = torch.cat([mask[:, :1].repeat_interleave(4, dim=1), mask[:, 1:]], dim=1)
    return mask.view(1, mask.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]


def image_condition(pipeline: "DancerPipeline", known: torch.Tensor | None, frames: int,
                    shared: SharedConditions) -> torch.Tensor:
    """y [20, f, lat_h, lat_w]: the mask of the known frames + the latent of (known frames, zeros ...).

    ``known``: [3, n, h, w] in [-1, 1] (the reference image: n = 1; a chain handover: n frames);
    None: a zero mask and the latent of an all-zero clip (no frame known).
    """
    count = 0 if known is None else known.shape[1]
    mask = known_frames_mask(frames, count, shared.lat_h, shared.lat_w, device=pipeline.device)
    clip = torch.zeros(3, frames, shared.h, shared.w)
    if known is not None:
        clip[:, :count] = known.cpu()
    return torch.cat([mask, pipeline.encode_video(clip, desc="VAE encode image condition")])


class ContextWindowConditions:
    """``window(a)`` -> (cond, neg_text, neg_pose) of the context window starting at latent frame a
    (the module doc says what each holds). Pose latents come from a :class:`PoseLatentCache` (host)
    and are copied to the device per window."""

    def __init__(self, pipeline: "DancerPipeline", shared: SharedConditions, poses: PoseLatentCache,
                 window_frames: int, context_image: str = "first") -> None:
        self.pipeline, self.shared, self.poses = pipeline, shared, poses
        self.window_frames, self.context_image = window_frames, context_image
        self._y: dict[bool, torch.Tensor] = {}

    def pixel_range(self, start: int) -> range:
        """Pixel frames of the window starting at latent frame ``start``."""
        first = C.VAE_STRIDE[0] * start
        return range(first, first + self.window_frames)

    def knows_reference(self, start: int) -> bool:
        """Whether the window at latent frame ``start`` gets the reference as a known first frame."""
        return self.context_image == "every" or (self.context_image == "first" and start == 0)

    def image_condition(self, start: int) -> torch.Tensor:
        known = self.knows_reference(start)
        if known not in self._y:
            self._y[known] = image_condition(self.pipeline, self.shared.first if known else None,
                                             self.window_frames, self.shared)
        return self._y[known]

    def pose_latents(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.poses.window(C.VAE_STRIDE[0] * start, self.window_frames)

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
    return dict(solver=sampling.solver, steps=sampling.steps, shift=sampling.shift,
                guide_scale=sampling.guide_scale, condition_guide_scale=sampling.condition_guide_scale,
                st_cond_cfg=sampling.st_cond_cfg, end_cond_cfg=sampling.end_cond_cfg, progress=progress,
                device=pipeline.device, scheduler_device=pipeline.offload_device,
                num_train_timesteps=C.NUM_TRAIN_TIMESTEPS,
                passes=pipeline.guidance_passes(sampling.guide_scale),
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
    if options.schedule == "uniform" and uniform_offsets(lat_f, window, overlap) == (0, 0):
        log.warning("--context_schedule uniform: these windows have no room to move (every overlap is already "
                    "the least allowed); the static plan runs. A smaller --context_overlap gives them room")
    noise = torch.randn(16, lat_f, shared.lat_h, shared.lat_w, dtype=torch.float32, generator=shared.generator,
                        device=pipeline.device)
    order = None
    if options.freenoise:
        noise = apply_freenoise(noise, window, overlap, shared.seed)
        order = freenoise_order(lat_f, window, overlap, torch.Generator().manual_seed(shared.seed))
    conditions = prepare_context_conditions(pipeline, shared, positive, negative, frame_num, sampling, options)
    plan = window_plan(options.schedule, lat_f, window, overlap)
    with dit_session(pipeline) as dit:
        return sample_dc_cfg_windowed(dit, noise, conditions.window, plan, window, options.fuse,
                                      lcm_noise_order=order, callback=callback,
                                      **_sampler_kwargs(pipeline, sampling, shared.seed, progress))


def prepare_context_conditions(pipeline: "DancerPipeline", shared: SharedConditions, positive: Sequence[Image.Image],
                               negative: Sequence[Image.Image], frame_num: int, sampling: "SamplingOptions",
                               options: LongVideoOptions) -> ContextWindowConditions:
    """Every VAE encode of a context run, done before the DiT loads: both pose streams once, the
    one-frame first latents of every window start any step of the plan uses, the image conditions."""
    poses = PoseLatentCache(pipeline, positive, negative, frame_num, shared.h, shared.w)
    conditions = ContextWindowConditions(pipeline, shared, poses, options.context_frames, options.context_image)
    plan = window_plan(options.schedule, latent_window(frame_num), options.latent_window, options.latent_overlap)
    for start in sorted({a for step in range(_step_count(sampling)) for a in plan(step)}):
        conditions.pose_latents(start)
        conditions.image_condition(start)
    return conditions


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


def color_match(video: torch.Tensor, source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray],
                strength: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Move ``video`` [3, n, H, W] (RGB in [-1, 1]) by the Lab transform that takes the per-channel
    (mean, std) ``source`` to ``target``, mixed with the original by ``strength`` in [0, 1].

    One transform for the whole window, so it adds no flicker inside it.
    """
    import cv2

    if strength <= 0:
        return video
    lab = (_to_lab(video) - source[0]) * (target[1] / np.maximum(source[1], eps)) + target[0]
    rgb = np.stack([cv2.cvtColor(frame.astype(np.float32), cv2.COLOR_LAB2RGB) for frame in lab])
    matched = torch.from_numpy(rgb).permute(3, 0, 1, 2).mul(2).sub(1).clamp(-1, 1).to(video.dtype)
    return matched if strength >= 1 else video + strength * (matched - video)


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
                       on_decoded: Callable[[int, torch.Tensor], None] | None = None,
                       callback: "StepCallback | None" = None) -> Iterator[np.ndarray]:
    """uint8 frames of a chained run, window after window (only one window's float frames held).

    Window k covers pixel frames [s_k, s_k + n_k) (:func:`chain_windows`): its known frames are the
    reference image (k = 0) or the previous window's decoded frames [s_k, s_k + N), N =
    ``chain_overlap`` (mask 1 on their latents); its pose latents come from the whole-video
    :class:`PoseLatentCache`; ref_x, ref_c, CLIP and text are the video's. After decoding, window
    k > 0 is colour-matched (``color_match`` > 0) and its own N handover frames are dropped
    (``chain_blend`` drop: the output there is the previous window's frames exactly) or blended
    with them (crossfade). Every rank decodes each window (the next one needs its frames); only
    ``emit`` ranks yield frames. ``on_window(k, start, conditions)`` sees each window's (cond,
    neg_text, neg_pose) before sampling, ``on_decoded(k, video)`` its decoded frames (tests).
    ``callback(idx, timestep, latent)`` after each step of each window, ``idx`` counted over all
    windows (k * steps + step).
    """
    shared = prepare_shared(pipeline, image, pose_first, prompt, max_area, frame_num, seed, negative_prompt)
    windows = chain_windows(frame_num, options.context_frames, options.chain_overlap)
    log.info(describe_plan(frame_num, options))
    poses = PoseLatentCache(pipeline, positive, negative, frame_num, shared.h, shared.w)
    vae = pipeline.vae()
    handover = options.chain_overlap
    known = shared.first  # the known frames of the next window [3, n, h, w]
    held: torch.Tensor | None = None  # the previous window's frames from the next start on, not yet written
    bar = progress_bar(total=len(windows) * _step_count(sampling), disable=not progress,
                       desc="sampling (windows x steps)", unit="step")
    # One DiT session for the whole chain: the DiT stays on its device while each window is decoded
    # (offloading it between windows would move or reload the whole model every window).
    with dit_session(pipeline) as dit:
        for k, (start, frames) in enumerate(windows):
            y = image_condition(pipeline, known, frames, shared)
            pos, neg = (p.to(pipeline.device) for p in poses.window(start, frames))
            conditions = shared.conditions(y, pos, neg)
            if on_window is not None:
                on_window(k, start, conditions)
            noise = torch.randn(16, latent_window(frames), shared.lat_h, shared.lat_w, dtype=torch.float32,
                                generator=shared.generator, device=pipeline.device)
            log.info("chain window %d/%d: frames %d-%d", k + 1, len(windows), start, start + frames - 1)
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
            if held is not None:
                # matched to the previous window's handover frames (themselves matched): window 0 is untouched
                video = color_match(video, lab_stats(video[:, :handover]), lab_stats(held), options.color_match)
                head = held if options.chain_blend == "drop" else crossfade(held, video[:, :handover])
                video = torch.cat([head, video[:, handover:]], dim=1)
            if on_decoded is not None:
                on_decoded(k, video)
            last = k + 1 == len(windows)
            keep = frames if last else frames - handover
            if emit:
                yield from to_uint8_frames(video[:, :keep])
            held = None if last else video[:, keep:].clone()
            known = held
            del video
    bar.close()


def long_video_frames(pipeline: "DancerPipeline", *args, options: LongVideoOptions, emit: bool = True,
                      **kwargs) -> Iterator[np.ndarray]:
    """Frames of a windowed run in ``options.mode`` (arguments of :func:`sample_context`)."""
    check_long_video_options(options)
    for line in ignored_settings(options):
        log.warning(line)
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
