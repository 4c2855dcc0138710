"""Every check of generation settings that needs no file and no model, in one place.

The command line (``generate``, ``batch``, ``benchmark``, ``demo``) and the Python API
(:class:`steadydancer.api.SteadyDancerPipeline`) run the same checks; only the names in the
one-line :class:`~steadydancer.errors.InputError` differ: the flag (``--frame_num``) or the
argument (``num_frames``). Checks that need the checkpoint (LoRA shapes, block counts, heads)
are :func:`steadydancer.models.memory.check_memory_options` and the torchrun ones in
:mod:`steadydancer.distributed.cli`; checks of input files are in :mod:`steadydancer.pipeline.inputs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError
from .pipeline.config import MAX_AREA_CONFIGS, NUM_TRAIN_TIMESTEPS, SUPPORTED_SIZES

if TYPE_CHECKING:
    from .pipeline.i2v import SamplingOptions
    from .pipeline.long_video import LongVideoOptions

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


def check_sampling(sampling: "SamplingOptions", names: dict[str, str] = FLAG_NAMES) -> None:
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


def check_long_video_options(options: "LongVideoOptions", names: dict[str, str] = FLAG_NAMES) -> None:
    """Windows that cannot be built (one line naming the setting)."""
    from .pipeline.long_video import CHAIN_BLENDS, CONTEXT_IMAGES, MODES
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


def check_generation(size: str | int, frame_num: int | None, sampling: "SamplingOptions | None" = None,
                     long_video: "LongVideoOptions | None" = None, names: dict[str, str] = FLAG_NAMES,
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
