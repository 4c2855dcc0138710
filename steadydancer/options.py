"""The options of one generation and every check of them that needs no file and no model.

The option dataclasses (:class:`SamplingOptions`, :class:`LongVideoOptions`,
:class:`MemoryOptions`) and their checks live here, below everything that uses them: the
pipeline (``steadydancer.pipeline``), the torchrun code (``steadydancer.distributed``), the
command line (``steadydancer.cli``) and the Python API (``steadydancer.api``) import this
module, and it imports none of them (only the constants of ``steadydancer.pipeline.config``),
so no import cycle can go through it.

The command line (``generate``, ``batch``, ``benchmark``, ``demo``) and the Python API run the
same checks; only the names in the one-line :class:`~steadydancer.errors.InputError` differ: the
flag (``--frame_num``) or the argument (``num_frames``). Checks that need the checkpoint (LoRA
shapes, block counts, heads) are :func:`steadydancer.models.memory.check_memory_options` and the
torchrun ones in :mod:`steadydancer.distributed.cli`; checks of input files are in
:mod:`steadydancer.pipeline.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .pipeline import config as C
from .pipeline.config import MAX_AREA_CONFIGS, NUM_TRAIN_TIMESTEPS, SUPPORTED_SIZES

# -- the options ------------------------------------------------------------------------------

@dataclass
class SamplingOptions:
    """The official sampling flags (defaults: generate_dancer.py's)."""

    solver: str = "unipc"
    steps: int = C.DEFAULT_STEPS
    shift: float = 5.0
    guide_scale: float = 5.0
    condition_guide_scale: float = 1.5
    st_cond_cfg: float = 0.1
    end_cond_cfg: float = 0.4
    timesteps: tuple[float, ...] | None = None  # euler/lcm: explicit step list (0..1000), e.g. lightx2v's


MODES: tuple[str, ...] = ("context", "chain")  # long-video modes
CONTEXT_IMAGES: tuple[str, ...] = ("none", "first", "every")  # context mode: windows given the reference
CHAIN_BLENDS: tuple[str, ...] = ("drop", "crossfade")  # chain mode: what happens to the handed-over frames


@dataclass(frozen=True)
class LongVideoOptions:
    """How a video longer than ``context_frames`` is generated (pixel frames; the flags' names)."""

    context_frames: int = 81
    context_overlap: int = 16  # context mode
    mode: str = "context"  # context | chain
    schedule: str = "static"  # static | uniform (context mode)
    fuse: str = "linear"  # linear | pyramid (context mode)
    freenoise: bool = True  # context mode
    color_match: float = 0.0  # chain mode: strength in [0, 1]; 0 = off
    context_image: str = "first"  # none | first | every (context mode)
    chain_overlap: int = 5  # chain mode: frames handed over as known frames, 4n+1
    chain_blend: str = "drop"  # drop | crossfade (chain mode)

    def windowed(self, frame_num: int) -> bool:
        """Whether ``frame_num`` frames need several windows (else the one-window path runs)."""
        return frame_num > self.context_frames

    @property
    def latent_window(self) -> int:
        from .sampling.context_windows import latent_window

        return latent_window(self.context_frames)

    @property
    def latent_overlap(self) -> int:
        from .sampling.context_windows import latent_overlap

        return latent_overlap(self.context_overlap)


@dataclass
class MemoryOptions:
    """What ``add_memory_arguments`` parses; defaults change nothing."""
    dit_dtype: str | None = None                     # bf16 | fp16 | fp32 | fp8 (None: pipeline default)
    dit_fp8_file: Path | None = None
    gguf: Path | None = None
    fp8_matmul: bool = False
    loras: list[tuple[Path, float]] = field(default_factory=list)
    blocks_on_gpu: int | None = None
    batch_guidance: bool = False
    compile: bool = False
    token_chunk_size: int | None = None
    # step caching (models/step_cache.py): none | magcache | fbcache | taylorseer, the threshold
    # (magcache, fbcache), MagCache's ratios file, TaylorSeer's steps between full forwards
    step_cache: str = "none"
    cache_threshold: float | None = None
    cache_ratios: Path | None = None
    cache_interval: int | None = None
    attention: str | None = None                     # auto | sage | flash3 | flash2 | sdpa (None: auto)
    vae_tiling: bool = False                         # VAE encode/decode in spatial tiles (diffusers' tiling)

    def step_cache_options(self):
        """The StepCacheOptions for the samplers (None without a step cache)."""
        if self.step_cache == "none":
            return None
        from steadydancer.models.step_cache import StepCacheOptions, read_cache_ratios

        if self.step_cache == "calibrate":      # steadydancer calibrate-cache: measure, skip nothing
            return StepCacheOptions(calibrate=True)

        ratios = read_cache_ratios(self.cache_ratios) if self.cache_ratios is not None else None
        return StepCacheOptions(self.step_cache, self.cache_threshold, ratios, interval=self.cache_interval)

    @property
    def block_swap(self) -> bool:
        return self.blocks_on_gpu is not None

    def flags_in_use(self) -> list[str]:
        """The memory flags that change something (for messages)."""
        names = {"dit_fp8_file": "--dit_fp8_file", "gguf": "--gguf", "fp8_matmul": "--fp8_matmul",
                 "loras": "--lora", "blocks_on_gpu": "--blocks_on_gpu", "batch_guidance": "--batch_guidance",
                 "compile": "--compile", "token_chunk_size": "--token_chunk_size",
                 "cache_threshold": "--cache_threshold", "cache_ratios": "--cache_ratios",
                 "cache_interval": "--cache_interval", "attention": "--attention",
                 "vae_tiling": "--vae_tiling"}
        used = [flag for attr, flag in names.items() if getattr(self, attr) not in (None, False, [])]
        used += [f"--step_cache {self.step_cache}"] if self.step_cache != "none" else []
        return (["--dit_dtype fp8"] if self.dit_dtype == "fp8" else []) + used


# -- the checks -------------------------------------------------------------------------------

SOLVERS: tuple[str, ...] = ("unipc", "dpm++", "euler", "lcm")
FEW_STEP_SOLVERS: tuple[str, ...] = ("euler", "lcm")  # the ones that take an explicit step list

# setting -> how the command line names it / how the Python API names it
FLAG_NAMES = {
    "size": "--size", "frame_num": "--frame_num", "solver": "--sample_solver", "steps": "--sample_steps",
    "timesteps": "--sample_timesteps", "cfg_start": "--st_cond_cfg", "cfg_end": "--end_cond_cfg",
    "context_frames": "--context_frames", "context_overlap": "--context_overlap", "mode": "--long_video",
    "schedule": "--context_schedule", "fuse": "--context_fuse",
    "context_image": "--context_image", "chain_overlap": "--chain_overlap", "chain_blend": "--chain_blend",
    "color_match": "--color_match", "freenoise": "--no_freenoise",
}
ARG_NAMES = {
    "size": "size", "frame_num": "num_frames", "solver": "solver", "steps": "num_inference_steps",
    "timesteps": "timesteps", "cfg_start": "cfg_window[0]", "cfg_end": "cfg_window[1]",
    "context_frames": "long_video.context_frames", "context_overlap": "long_video.context_overlap",
    "mode": "long_video.mode", "schedule": "long_video.schedule", "fuse": "long_video.fuse",
    "context_image": "long_video.context_image", "chain_overlap": "long_video.chain_overlap",
    "chain_blend": "long_video.chain_blend", "color_match": "long_video.color_match",
    "freenoise": "long_video.freenoise",
}


def max_area_for(size: str | int, names: dict[str, str] = FLAG_NAMES, allow_area: bool = False) -> int:
    """Pixel area of an official size name ("1280*720", ...); ``allow_area``: an int is taken as the
    area itself (the API's experiments and tests). InputError for anything else."""
    if allow_area and isinstance(size, int) and not isinstance(size, bool):
        if size < 16 * 16:
            raise InputError(f"{names['size']} {size}: a pixel area must be at least 256")
        return size
    if size not in MAX_AREA_CONFIGS:
        raise InputError(f"{names['size']} {size}: unsupported; supported sizes are {', '.join(SUPPORTED_SIZES)}"
                         + (" (or an int pixel area)" if allow_area else ""))
    return MAX_AREA_CONFIGS[size]


def check_frame_num(frame_num: int, names: dict[str, str] = FLAG_NAMES) -> None:
    """Frame counts must be 4n+1 (the VAE packs 4 frames per latent frame after the first)."""
    if isinstance(frame_num, bool) or not isinstance(frame_num, int) or frame_num < 1 or (frame_num - 1) % 4:
        raise InputError(f"{names['frame_num']} {frame_num}: must be 4n+1 (e.g. 17, 33, 49, 81)")


def check_timesteps(timesteps, solver: str, names: dict[str, str] = FLAG_NAMES) -> None:
    """An explicit step list: only for euler/lcm, values in (0, 1000], strictly decreasing."""
    if timesteps is None:
        return
    flag = names["timesteps"]
    if solver not in FEW_STEP_SOLVERS:
        raise InputError(f"{flag}: needs {names['solver']} euler or lcm (got {solver})")
    steps = list(timesteps)
    shown = ",".join(f"{t:g}" for t in steps)
    if not steps or not all(0 < t <= NUM_TRAIN_TIMESTEPS for t in steps) or any(a <= b for a, b in zip(steps, steps[1:])):
        raise InputError(f"{flag} {shown}: expected decreasing values in (0, {NUM_TRAIN_TIMESTEPS}]")


def check_sampling(sampling: SamplingOptions, names: dict[str, str] = FLAG_NAMES) -> None:
    """Solver, step count, step list and the pose-CFG window (fractions of the steps)."""
    if sampling.solver not in SOLVERS:
        raise InputError(f"{names['solver']} {sampling.solver!r}: expected one of {', '.join(SOLVERS)}")
    if sampling.timesteps is None and sampling.steps < 1:
        raise InputError(f"{names['steps']} {sampling.steps}: must be >= 1")
    check_timesteps(sampling.timesteps, sampling.solver, names)
    start, end = sampling.st_cond_cfg, sampling.end_cond_cfg
    if not 0 <= start <= 1:
        raise InputError(f"{names['cfg_start']} {start:g}: a fraction of the steps, expected 0 to 1")
    if not 0 <= end <= 1 or end < start:
        raise InputError(f"{names['cfg_end']} {end:g}: a fraction of the steps, expected {start:g} "
                         f"({names['cfg_start']}) to 1")


def check_long_video_options(options: LongVideoOptions, names: dict[str, str] = FLAG_NAMES) -> None:
    """Windows that cannot be built (one line naming the setting)."""
    from .sampling.context_windows import FUSIONS, SCHEDULES

    window, overlap = options.context_frames, options.context_overlap
    if window < 5 or (window - 1) % 4:
        raise InputError(f"{names['context_frames']} {window}: must be 4n+1 with n >= 1 (e.g. 33, 81)")
    if overlap < 1 or overlap >= window:
        raise InputError(f"{names['context_overlap']} {overlap}: must be at least 1 and less than the window "
                         f"({names['context_frames']} {window})")
    for key, value, allowed in (("mode", options.mode, MODES), ("schedule", options.schedule, SCHEDULES),
                                ("fuse", options.fuse, FUSIONS), ("context_image", options.context_image,
                                                                  CONTEXT_IMAGES),
                                ("chain_blend", options.chain_blend, CHAIN_BLENDS)):
        if value not in allowed:
            raise InputError(f"{names[key]} {value}: expected one of {', '.join(allowed)}")
    handover = options.chain_overlap
    if options.mode == "chain" and (isinstance(handover, bool) or not isinstance(handover, int) or handover < 1
                                    or (handover - 1) % 4 or handover >= window):
        raise InputError(f"{names['chain_overlap']} {handover}: frames handed over to the next window, 4n+1 "
                         f"(1, 5, 9, ...) and less than the window ({names['context_frames']} {window})")
    strength = options.color_match
    if isinstance(strength, str) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise InputError(f"{names['color_match']} {strength}: a strength, expected 0 to 1")


def check_generation(size: str | int, frame_num: int | None, sampling: SamplingOptions | None = None,
                     long_video: LongVideoOptions | None = None, names: dict[str, str] = FLAG_NAMES,
                     allow_area: bool = False) -> int:
    """All of the above for one generation's settings; returns the pixel area of ``size``."""
    max_area = max_area_for(size, names, allow_area)
    if frame_num is not None:
        check_frame_num(frame_num, names)
    if sampling is not None:
        check_sampling(sampling, names)
    if long_video is not None:
        check_long_video_options(long_video, names)
    return max_area


# -- seeds, numbers, defaults -----------------------------------------------------------------

# Random seeds are drawn below 2**53: every such integer survives a JavaScript number (a page, a
# JSON reader), so a seed shown anywhere can be typed back and reproduces the video. (The official
# script draws up to sys.maxsize; any seed a user gives is still accepted up to torch's limit.)
MAX_RANDOM_SEED = 2**53 - 1
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's largest


def draw_seed() -> int:
    """A random seed in [0, 2**53)."""
    import random

    return random.randint(0, MAX_RANDOM_SEED)


def is_integer(value: object) -> bool:
    """An int or a numpy integer, not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    import numbers

    return isinstance(value, numbers.Integral)


def is_real(value: object) -> bool:
    """An int, a float or a numpy number, not a bool."""
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_seed(seed: object, name: str = "--base_seed", allow_random: bool = True) -> None:
    """A seed is a whole number in [0, 2**64) (torch's range); -1 (``allow_random``) draws one."""
    if not is_integer(seed):
        raise InputError(f"{name} {seed!r}: expected a whole number (-1: random)")
    if (allow_random and int(seed) == -1) or 0 <= int(seed) <= MAX_SEED:
        return
    raise InputError(f"{name} {seed}: expected -1 (random) or 0 to 2**64 - 1")


def largest_area() -> int:
    """The largest pixel area of the official sizes (1280*720)."""
    return max(MAX_AREA_CONFIGS.values())
