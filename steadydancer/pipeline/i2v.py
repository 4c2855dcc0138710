"""The SteadyDancer image-to-video pipeline: encoders -> conditions -> DC-CFG sampling -> VAE decode.

Follows the official ``WanI2VDancer.generate`` step by step (sizes, mask, noise, conditions,
offloading); see docs/generation.md. Models load lazily on first use, straight
onto the device they run on, so a missing file is reported before any large load.
"""

from __future__ import annotations

import gc
import logging
import os
import zipfile
from contextlib import nullcontext
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..models.memory import DTYPES, check_memory_options, load_dit_with_options, sampler_passes
from ..options import MemoryOptions, SamplingOptions, draw_seed
from ..sampling import DiTConditions, sample_dc_cfg
from ..sampling.dc_cfg import StepCallback
from ..sampling.schedulers import lcm_noise_seed
from . import config as C
from .inputs import first_frame_mask, latent_size, pil_to_tensor, resize_bicubic

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA (this process's local rank) when available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def checkpoint_files(ckpt_dir: str | os.PathLike, dit_file_given: bool = False) -> dict[str, Path]:
    """Paths of the official files in a checkpoint folder; InputError naming the first missing one.

    ``dit_file_given``: the DiT comes from a GGUF / FP8 file (--gguf, --dit_fp8_file), so the
    folder needs only the encoders (config.json is optional).
    """
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise InputError(f"--ckpt_dir {ckpt}: checkpoint folder not found")
    files = {} if dit_file_given else {
        "dit_config": ckpt / C.DIT_CONFIG,
        "dit_index": ckpt / C.DIT_INDEX,
    }
    files.update({
        "t5": ckpt / C.T5_CHECKPOINT,
        "t5_tokenizer": ckpt / C.T5_TOKENIZER,
        "clip": ckpt / C.CLIP_CHECKPOINT,
        "vae": ckpt / C.VAE_CHECKPOINT,
    })
    for key, path in files.items():
        exists = path.is_dir() if key == "t5_tokenizer" else path.is_file()
        if not exists:
            raise InputError(f"checkpoint file missing: {path}")
    return files


def check_pth_file(path: Path, what: str) -> None:
    """InputError unless ``path`` looks like a whole ``torch.save`` file (cheap: no tensor is read).

    A zip-format file must have its central directory and every member's data inside the file
    (a truncated download loses the directory at the end); a legacy file must start as a pickle.
    """
    size = path.stat().st_size
    hint = "download it again"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.header_offset + info.compress_size > size:
                        raise zipfile.BadZipFile(f"member {info.filename} ends past the end of the file")
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(f"{what} {path}: damaged ({exc}); {hint}") from None
        return
    with open(path, "rb") as handle:
        head = handle.read(2)
    if len(head) < 2 or head[0] != 0x80:  # pickle protocol marker of the legacy format
        raise InputError(f"{what} {path}: not a complete PyTorch checkpoint ({size} bytes; truncated?); {hint}")


def verify_checkpoint(ckpt_dir: str | os.PathLike, dit_from_other_file: bool = False) -> dict[str, Path]:
    """Check the whole checkpoint folder before any model loads; returns :func:`checkpoint_files`.

    Every file present; each DiT shard named by the index present, its header readable and
    every tensor's bytes inside the file; the T5, CLIP and VAE ``.pth`` files whole (see
    :func:`check_pth_file`). A damaged file is one InputError naming it, found in seconds rather
    than after the encoders have run. ``dit_from_other_file``: the DiT weights come from
    ``--gguf`` / ``--dit_fp8_file``, so the shards are not needed and config.json is optional
    (read when present).
    """
    from ..models.loading import index_checkpoint, read_dit_config

    files = checkpoint_files(ckpt_dir, dit_file_given=dit_from_other_file)
    if not dit_from_other_file or (Path(ckpt_dir) / C.DIT_CONFIG).is_file():
        read_dit_config(ckpt_dir)
    if not dit_from_other_file:
        index_checkpoint(Path(ckpt_dir))
    for key, what in (("t5", "T5 checkpoint"), ("clip", "CLIP checkpoint"), ("vae", "VAE checkpoint")):
        check_pth_file(files[key], what)
    return files


def resolve_seed(seed: int) -> int:
    """``seed``, or a random one when negative; logged (with the flag that reproduces a random one)."""
    if seed >= 0:
        log.info("seed %d", seed)
        return seed
    seed = draw_seed()
    log.info("seed %d, drawn at random (pass --base_seed %d to reproduce)", seed, seed)
    return seed


class DancerPipeline:
    """SteadyDancer I2V on one device.

    ``offload_model``: move each model off the GPU once its stage is done (T5 and CLIP after
    encoding, the DiT after sampling), as the official --offload_model; None = True.
    ``t5_cpu``: keep T5 on the CPU. On the CPU everything runs in float32.
    ``keep_models``: with offloading, park the DiT on the CPU after sampling (for another
    ``generate``) rather than dropping it (a one-shot run needs no host copy of the 14B model).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, device: torch.device | str | None = None,
                 offload_model: bool | None = None, t5_cpu: bool = False,
                 dit_dtype: torch.dtype | None = None, keep_models: bool = True,
                 memory: "MemoryOptions | None" = None) -> None:
        self.files = checkpoint_files(ckpt_dir, dit_file_given=bool(memory and (memory.gguf or memory.dit_fp8_file)))
        self.ckpt_dir = Path(ckpt_dir)
        self.device = torch.device(device) if device is not None else default_device()
        self.on_gpu = self.device.type != "cpu"
        self.offload_model = True if offload_model is None else bool(offload_model)
        self.t5_cpu = t5_cpu
        self.keep_models = keep_models
        # memory/speed options (block swap, FP8/GGUF weights, LoRA, batched guidance): models/memory.py;
        # the defaults change nothing
        self.memory = memory or MemoryOptions()
        self.dit_dtype = (DTYPES.get(self.memory.dit_dtype or "") or dit_dtype
                          or (torch.bfloat16 if self.on_gpu else torch.float32))
        self.t5_dtype = torch.bfloat16 if self.on_gpu else torch.float32
        self.clip_dtype = torch.float16 if self.on_gpu else torch.float32
        self._t5 = self._clip = self._vae = self._dit = None
        from ..models.memory import dit_config_for

        dit_config = dit_config_for(self.ckpt_dir, self.memory)
        self.text_len = int(dit_config.get("text_len", 512))
        check_memory_options(self.ckpt_dir, self.device, self.memory)  # before any model loads
        self.patch_size = tuple(dit_config.get("patch_size", (1, 2, 2)))

    # -- models, loaded on first use ---------------------------------------------------------

    @property
    def offload_device(self) -> torch.device:
        return torch.device("cpu") if self.offload_model else self.device

    def text_encoder(self):
        if self._t5 is None:
            from ..encoders.t5 import TextEncoder

            log.info("loading T5 from %s", self.files["t5"])
            self._t5 = TextEncoder(self.files["t5"], self.files["t5_tokenizer"], device="cpu",
                                   dtype=self.t5_dtype, text_len=self.text_len)
        return self._t5

    def clip(self):
        if self._clip is None:
            from ..encoders.clip import ClipVisionEncoder

            log.info("loading CLIP from %s", self.files["clip"])
            self._clip = ClipVisionEncoder(self.files["clip"], device=self.offload_device, dtype=self.clip_dtype)
        return self._clip

    def vae(self):
        if self._vae is None:
            from ..encoders.vae import WanVAE

            log.info("loading VAE from %s", self.files["vae"])
            self._vae = WanVAE(self.files["vae"], device=self.device, dtype=torch.float32)
            if self.memory.vae_tiling:
                self._vae.enable_tiling()
        return self._vae

    def dit(self):
        if self._dit is None:
            log.info("loading DiT from %s (%s)", self.ckpt_dir, str(self.dit_dtype).replace("torch.", ""))
            self._dit = load_dit_with_options(self.ckpt_dir, self.device, self.dit_dtype, self.memory)
        return self._dit

    # -- stages ------------------------------------------------------------------------------

    def encode_text(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states [L, C] of the prompt and the negative prompt, on the execution device."""
        t5 = self.text_encoder()
        log.info("T5: encoding the prompt and the negative prompt")
        if not self.t5_cpu:
            t5.to(self.device)
        context, context_null = t5.encode([prompt])[0], t5.encode([negative_prompt])[0]
        if not self.t5_cpu and self.offload_model:
            t5.to("cpu")
        return context.to(self.device), context_null.to(self.device)

    def encode_clip(self, image: torch.Tensor, pose_first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP features [257, 1280] of the reference image and of the first pose frame ([3,H,W] in [-1,1])."""
        clip = self.clip().to(self.device)
        log.info("CLIP: encoding the reference image and the first pose frame")
        clip_x = clip.encode(image[None].to(self.device))[0]
        clip_c = clip.encode(pose_first[None].to(self.device))[0]
        if self.offload_model:
            clip.to("cpu")
        return clip_x, clip_c

    def encode_video(self, frames: torch.Tensor, desc: str | None = None) -> torch.Tensor:
        """[3, N, h, w] in [-1, 1] -> normalised latent [16, (N-1)//4+1, h/8, w/8] on the device.

        ``desc``: label of a progress bar over the frames (None: none).
        """
        return self.vae().encode(frames.to(self.device), desc=desc)

    @torch.no_grad()
    def generate(self, image: Image.Image, pose_first: Image.Image, positive: list[Image.Image],
                 negative: list[Image.Image], prompt: str, max_area: int, frame_num: int,
                 sampling: SamplingOptions, seed: int = -1, negative_prompt: str | None = None,
                 progress: bool = True, callback: "StepCallback | None" = None,
                 decode: bool = True) -> torch.Tensor:
        """The video [3, frame_num, H, W] in [-1, 1] (float32, on the CPU; see :meth:`decode`).

        ``image``: reference (PIL RGB); ``pose_first``, ``positive``, ``negative``: pose frames
        already PIL-bicubic-resized to the reference image's size. ``callback(idx, timestep,
        latent)``: called after each sampling step (``sampling.dc_cfg.StepCallback``; may return
        a replacement latent). ``decode`` False: return the final latent [16, (frame_num-1)//4+1,
        H/8, W/8] (float32) without the VAE decode.
        """
        if len(positive) != frame_num or len(negative) != frame_num:
            raise ValueError(f"need {frame_num} positive and negative frames, got {len(positive)}, {len(negative)}")
        device = self.device
        img = pil_to_tensor(image)
        img_c = pil_to_tensor(pose_first)
        height, width = img.shape[1:]
        lat_h, lat_w = latent_size(height, width, max_area, self.patch_size[1:], C.VAE_STRIDE[1:])
        h, w = lat_h * C.VAE_STRIDE[1], lat_w * C.VAE_STRIDE[2]
        lat_f = (frame_num - 1) // C.VAE_STRIDE[0] + 1
        log.info("reference %dx%d -> video %dx%d, %d frames (%d latent frames of %dx%d)",
                 width, height, w, h, frame_num, lat_f, lat_w, lat_h)

        seed = resolve_seed(seed)
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.randn(16, lat_f, lat_h, lat_w, dtype=torch.float32, generator=generator, device=device)
        mask = first_frame_mask(frame_num, lat_h, lat_w, device=device)

        context, context_null = self.encode_text(prompt, negative_prompt or C.NEGATIVE_PROMPT)
        clip_x, clip_c = self.encode_clip(img, img_c)

        log.info("VAE: encoding the image condition, the reference, the first pose frame and both "
                 "pose streams (%d frames each)", frame_num)
        first = resize_bicubic(img[None], h, w)  # [3, 1, h, w]
        y = self.encode_video(torch.cat([first, torch.zeros(3, frame_num - 1, h, w)], dim=1),
                              desc="VAE encode image condition")
        y = torch.cat([mask, y])
        ref_x = self.encode_video(first)
        ref_x = torch.cat([ref_x, torch.ones(4, 1, lat_h, lat_w, device=device), ref_x])
        ref_c = self.encode_video(resize_bicubic(img_c[None], h, w))
        ref_c = torch.cat([ref_c, torch.zeros(4, 1, lat_h, lat_w, device=device), ref_c])
        pose_pos = self.encode_video(resize_bicubic(torch.stack([pil_to_tensor(f) for f in positive]), h, w),
                                     desc="VAE encode positive poses")
        pose_neg = self.encode_video(resize_bicubic(torch.stack([pil_to_tensor(f) for f in negative]), h, w),
                                     desc="VAE encode negative poses")

        def conditions(text: torch.Tensor, pose: torch.Tensor) -> DiTConditions:
            return DiTConditions(text_context=text[None], clip_image=clip_x[None], clip_pose=clip_c[None],
                                 image_cond=y[None], pose_latents=pose[None], ref_image=ref_x[None],
                                 ref_pose=ref_c[None])

        cond = conditions(context, pose_pos)
        neg_text = conditions(context_null, pose_pos)
        neg_pose = conditions(context, pose_neg)

        dit = self.dit()
        if getattr(dit, "block_swap", None) is None:  # a block-swapped DiT streams its own blocks
            dit = dit.to(device)
        if self.offload_model and self.on_gpu:
            torch.cuda.empty_cache()
        # The official loop runs under autocast in the DiT's dtype; on the CPU all is float32.
        autocast = (torch.autocast(device.type, dtype=self.dit_dtype)
                    if self.on_gpu and self.dit_dtype != torch.float32 else nullcontext())
        with autocast:
            latent = sample_dc_cfg(
                dit, noise, cond, neg_text, neg_pose, solver=sampling.solver, steps=sampling.steps,
                shift=sampling.shift, guide_scale=sampling.guide_scale,
                condition_guide_scale=sampling.condition_guide_scale, st_cond_cfg=sampling.st_cond_cfg,
                end_cond_cfg=sampling.end_cond_cfg, progress=progress, device=device,
                scheduler_device=self.offload_device, num_train_timesteps=C.NUM_TRAIN_TIMESTEPS,
                passes=self.guidance_passes(sampling.guide_scale),
                sample_timesteps=sampling.timesteps, solver_seed=lcm_noise_seed(seed), callback=callback,
                step_cache=self.memory.step_cache_options())
        del cond, neg_text, neg_pose, noise
        if self.offload_model and self.on_gpu:
            if self.keep_models and getattr(dit, "block_swap", None) is None:
                dit.to("cpu")
            else:  # a block-swapped DiT is dropped: its swap slots are tied to the GPU
                self._dit = None
            del dit
            gc.collect()
            torch.cuda.empty_cache()
        if not decode:
            return latent.float().cpu()
        return self.decode(latent)

    def guidance_passes(self, guide_scale: float):
        """How the guidance passes of each step run (batched or not; without the negative-text
        pass at guide scale 1): the ``passes`` of ``sample_dc_cfg``."""
        return sampler_passes(self.memory, guide_scale)

    def decode(self, latent: torch.Tensor) -> torch.Tensor | None:
        """The video [3, N, H, W] in [-1, 1] (float32, on the CPU) from the final latent [16, f, h, w]."""
        vae = self.vae()
        log.info("VAE: decoding %d frames", 4 * (latent.shape[1] - 1) + 1)
        return vae.decode(latent.to(self.device), desc="VAE decode").cpu()


def video_to_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, N, H, W] in [-1, 1] -> uint8 [N, H, W, 3], scaled and truncated as the official writer."""
    frames = video.clamp(-1, 1).add(1).div(2).mul(255).to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous()
