"""``steadydancer generate`` / ``generate_dancer.py``: the official generation command line.

Official flags (SteadyDancer's generate_dancer.py) plus ``--input_dir`` (a folder written by
``steadydancer prepare``: ref_image.png, prompt.txt, positive/, negative/) and ``--device``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from datetime import datetime
from pathlib import Path

from ..options import SOLVERS
from ..errors import InputError
from ..pipeline import config as C

log = logging.getLogger(__name__)

TASKS = ("i2v-14B",)
# The official fallback prompt of the i2v task, used when no --prompt (and no prompt.txt) is given.
EXAMPLE_PROMPT = (
    "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. The fluffy-furred "
    "feline gazes directly at the camera with a relaxed expression. Blurred beach scenery forms the "
    "background featuring crystal-clear waters, distant green hills, and a blue sky dotted with white "
    "clouds. The cat assumes a naturally relaxed posture, as if savoring the sea breeze and warm sunlight. "
    "A close-up shot highlights the feline's intricate details and the refreshing atmosphere of the seaside.")


def str2bool(value: str) -> bool:
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got {value!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """All generation flags (official names and defaults), in one place."""
    parser.add_argument("--task", default="i2v-14B", help="only i2v-14B (SteadyDancer)")
    parser.add_argument("--size", default=C.DEFAULT_SIZE,
                        help=f"output area width*height; the aspect ratio follows the image ({', '.join(C.SUPPORTED_SIZES)})")
    parser.add_argument("--frame_num", type=int, default=None,
                        help="frames to generate, 4n+1 (default 81, or fewer if the pose folders hold fewer)")
    parser.add_argument("--ckpt_dir", default=None, help="SteadyDancer-14B checkpoint folder")
    parser.add_argument("--offload_model", type=str2bool, default=None,
                        help="move each model off the GPU after its stage (default: True on one GPU)")
    parser.add_argument("--t5_cpu", action="store_true", default=False, help="run T5 on the CPU")
    parser.add_argument("--save_file", default=None, help="output mp4 (default: a name from task, size, prompt, time)")
    parser.add_argument("--prompt", default=None, help="text prompt (default: the input folder's prompt.txt)")
    parser.add_argument("--base_seed", type=int, default=-1, help="noise seed, 0 to 2**64-1; -1 = random (drawn below 2**53 and logged)")
    parser.add_argument("--image", default=None, help="reference image")
    parser.add_argument("--cond_pos_folder", default=None, help="positive pose frames 0000.jpg, 0001.jpg, ...")
    parser.add_argument("--cond_neg_folder", default=None, help="negative (augmented) pose frames")
    parser.add_argument("--input_dir", default=None,
                        help="prepared input folder: fills --image, --prompt, --cond_pos_folder, --cond_neg_folder")
    parser.add_argument("--sample_solver", default="unipc", choices=SOLVERS,
                        help="sampler; euler and lcm are the few-step solvers of step-distillation LoRAs")
    parser.add_argument("--sample_steps", type=int, default=None, help="sampling steps (default 40)")
    parser.add_argument("--sample_shift", type=float, default=None,
                        help="flow-matching shift (default 5.0; 3.0 at 832*480 and 480*832)")
    parser.add_argument("--sample_guide_scale", type=float, default=5.0, help="text CFG scale")
    parser.add_argument("--condition_guide_scale", type=float, default=1.5, help="pose CFG scale")
    parser.add_argument("--st_cond_cfg", type=float, default=0.1, help="pose CFG starts after this fraction of steps")
    parser.add_argument("--end_cond_cfg", type=float, default=0.4, help="pose CFG ends before this fraction of steps")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--sample_timesteps", default=None,
                        help="euler/lcm only: the step list on the 0..1000 scale, e.g. 1000,750,500,250 "
                             "(lightx2v's); replaces --sample_steps")
    parser.add_argument("--audio", default=None, metavar="FILE",
                        help="put this file's sound (the driving video's) into the output; in time with the "
                             "dance when the poses were prepared with --target_fps 16")
    parser.add_argument("--audio_start", type=float, default=0.0, metavar="SECONDS",
                        help="where in --audio the sound starts (the time of the first pose frame; default 0)")
    add_long_video_arguments(parser)
    # multi-GPU: under torchrun (see steadydancer/distributed and docs/multi_gpu.md)
    multi = parser.add_argument_group("multi-GPU (official flags; launch with torchrun --nproc_per_node=N)")
    multi.add_argument("--ulysses_size", type=int, default=1,
                       help="Ulysses sequence-parallel degree (must divide the DiT's heads)")
    multi.add_argument("--ring_size", type=int, default=1,
                       help="ring-attention sequence-parallel degree; ulysses_size x ring_size = processes")
    multi.add_argument("--cfg_parallel", type=int, nargs="?", const=2, default=1, metavar="N",
                       help="the guidance passes of each step on N groups of --ulysses_size x --ring_size "
                            "processes (default off; alone: N=2, xDiT's CFG parallelism; 3: one per DC-CFG pass)")
    multi.add_argument("--dit_fsdp", action="store_true", default=False, help="shard the DiT's blocks (FSDP)")
    multi.add_argument("--t5_fsdp", action="store_true", default=False, help="shard T5's blocks (FSDP)")
    extend = parser.add_argument_group("prompt extension (official flags; not supported)")
    extend.add_argument("--use_prompt_extend", action="store_true", default=False)
    extend.add_argument("--prompt_extend_method", default="local_qwen", choices=["dashscope", "local_qwen"])
    extend.add_argument("--prompt_extend_model", default=None)
    extend.add_argument("--prompt_extend_target_lang", default="zh", choices=["zh", "en"])
    # memory and speed (block swap, FP8/GGUF weights, LoRA, batched guidance): models/memory.py
    from ..models.memory import add_memory_arguments

    add_memory_arguments(parser)


def add_long_video_arguments(parser: argparse.ArgumentParser) -> None:
    """Windowed generation of videos longer than one window (docs/long_video.md)."""
    from ..options import CHAIN_BLENDS, CONTEXT_IMAGES, MODES, LongVideoOptions
    from ..sampling.context_windows import FUSIONS, SCHEDULES

    defaults = LongVideoOptions()
    group = parser.add_argument_group("long videos (more frames than --context_frames: overlapping windows)")
    group.add_argument("--context_frames", type=int, default=defaults.context_frames,
                       help="frames the DiT sees at once, 4n+1 (default 81); longer videos are windowed")
    group.add_argument("--context_overlap", type=int, default=defaults.context_overlap,
                       help="context mode: the fewest frames neighbouring windows share (default 16)")
    group.add_argument("--long_video", default=defaults.mode, choices=MODES,
                       help="context: every step denoises all windows and fuses them (the paper's method); "
                            "chain: windows one after another, each handed the previous one's last frames")
    group.add_argument("--context_schedule", default=defaults.schedule, choices=SCHEDULES,
                       help="context mode: static windows, or uniform (seams shift from step to step)")
    group.add_argument("--context_fuse", default=defaults.fuse, choices=FUSIONS,
                       help="context mode: weights of overlapping predictions")
    group.add_argument("--no_freenoise", action="store_true", default=False,
                       help="context mode: independent noise for every frame (default: FreeNoise)")
    group.add_argument("--context_image", default=defaults.context_image, choices=CONTEXT_IMAGES,
                       help="context mode: windows given the reference as a known first frame "
                            "(default first: window 0 only; every: as kijai's wrapper)")
    group.add_argument("--chain_overlap", type=int, default=defaults.chain_overlap,
                       help="chain mode: the previous window's last N frames (4n+1) handed over as known frames "
                            f"(default {defaults.chain_overlap})")
    group.add_argument("--chain_blend", default=defaults.chain_blend, choices=CHAIN_BLENDS,
                       help="chain mode: drop the next window's copies of the handed-over frames (default), "
                            "or crossfade them")
    group.add_argument("--color_match", type=float, nargs="?", const=1.0, default=defaults.color_match,
                       metavar="STRENGTH",
                       help="chain mode: move each window after the first towards the colours of the previous "
                            "window's handover frames, strength 0..1 (flag alone: 1)")


def long_video_options_from_args(args: argparse.Namespace):
    """The :class:`~steadydancer.options.LongVideoOptions` of parsed generate flags."""
    from ..options import LongVideoOptions

    return LongVideoOptions(context_frames=args.context_frames, context_overlap=args.context_overlap,
                            mode=args.long_video, schedule=args.context_schedule, fuse=args.context_fuse,
                            freenoise=not args.no_freenoise, color_match=args.color_match,
                            context_image=args.context_image, chain_overlap=args.chain_overlap,
                            chain_blend=args.chain_blend)


def parse_sample_timesteps(value: str | None, solver: str) -> tuple[float, ...] | None:
    """``--sample_timesteps`` "1000,750,..." -> floats, checked (:func:`steadydancer.options.check_timesteps`)."""
    from ..options import check_timesteps

    if value is None:
        return None
    try:
        steps = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"--sample_timesteps {value}: expected comma-separated numbers, e.g. 1000,750,500,250") from None
    check_timesteps(steps, solver)
    return steps


def check_parallel_args(args: argparse.Namespace, data_parallel: bool = False) -> None:
    """Multi-GPU flags against torchrun's world size: impossible combinations stop with one line.
    ``data_parallel`` (batch): the processes form groups of --ulysses_size x --ring_size x --cfg_parallel."""
    from ..distributed.launch import check_parallel_flags

    check_parallel_flags(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, data_parallel=data_parallel,
                         cfg_parallel=args.cfg_parallel)


def check_flags(args: argparse.Namespace, data_parallel: bool = False) -> None:
    """The checks that need no file (task, size, prompt extension, multi-GPU, frames, sampling, long
    video): InputError. Cheap, so that ``demo`` can run them before its long preparation.
    ``data_parallel``: see :func:`check_parallel_args`. The generation settings go through
    :func:`steadydancer.options.check_generation`, as the Python API's arguments do.
    """
    from ..options import check_generation, check_seed, max_area_for

    if args.task not in TASKS:
        raise InputError(f"--task {args.task}: only {', '.join(TASKS)} is supported")
    max_area_for(args.size)
    check_seed(args.base_seed)
    if args.use_prompt_extend:
        raise InputError("--use_prompt_extend: prompt extension is not supported; pass the prompt you want")
    check_parallel_args(args, data_parallel)
    if data_parallel and getattr(args, "audio", None) is not None:
        raise InputError("--audio: one video's sound; not available for a batch of videos")
    check_generation(args.size, args.frame_num, sampling_options_from_args(args, fill_defaults=False),
                     long_video_options_from_args(args) if hasattr(args, "context_frames") else None)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults as the official script does and from --input_dir; InputError for bad values."""
    check_flags(args)
    if args.ckpt_dir is None:
        raise InputError("--ckpt_dir is required (the SteadyDancer-14B folder)")
    if args.input_dir is not None:
        from ..pipeline.inputs import PreparedFolder

        folder = Path(args.input_dir)
        if not folder.is_dir():
            raise InputError(f"--input_dir {folder}: folder not found")
        prepared = PreparedFolder(folder)
        args.image = args.image or str(prepared.image)
        args.cond_pos_folder = args.cond_pos_folder or str(prepared.positive)
        args.cond_neg_folder = args.cond_neg_folder or str(prepared.negative)
        if args.prompt is None:
            args.prompt = prepared.prompt()
            if args.prompt:
                log.info("prompt from %s: %s", prepared.prompt_file, args.prompt)
            elif args.prompt is not None:
                log.warning("%s is empty: generating with an empty prompt (describe the reference image "
                            "there, or pass --prompt)", prepared.prompt_file)
        _log_pose_speed(folder)
    if args.image is None:
        raise InputError("--image is required (or --input_dir)")
    check_audio_args(args)
    if args.prompt is None:
        log.info("no --prompt given: using the official example prompt")
        args.prompt = EXAMPLE_PROMPT
    fill_sampling_defaults(args)
    if args.save_file is None:
        args.save_file = default_save_file(args)
    return args


def check_audio_args(args: argparse.Namespace) -> None:
    """--audio must be a readable file with sound; a warning when the poses' rate is not the video's."""
    if getattr(args, "audio", None) is None:
        return
    from ..pipeline.audio import has_audio

    if not Path(args.audio).is_file():
        raise InputError(f"--audio {args.audio}: file not found")
    if not has_audio(args.audio):
        raise InputError(f"--audio {args.audio}: no sound stream in it")
    if args.audio_start < 0:
        raise InputError(f"--audio_start {args.audio_start:g}: must be 0 or more")
    fps = _pose_fps(Path(args.input_dir)) if args.input_dir else None
    if fps is not None and abs(fps - C.SAMPLE_FPS) > 1e-3:
        log.warning("--audio: the poses are %.4g fps but the video plays at %d fps, so the sound will not be in "
                    "time with the dance (prepare with --target_fps %d)", fps, C.SAMPLE_FPS, C.SAMPLE_FPS)


def add_audio_if_asked(args: argparse.Namespace, written: str | Path) -> None:
    """After the mp4 is complete: mux --audio's sound into it (in place, atomically)."""
    if getattr(args, "audio", None) is None:
        return
    from ..pipeline.audio import add_audio

    add_audio(written, args.audio, start_s=args.audio_start)


def _pose_fps(folder: Path) -> float | None:
    try:
        return float(json.loads((folder / "keypoints.json").read_text())["driving"]["fps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _log_pose_speed(folder: Path) -> None:
    """Say when the prepared poses were sampled at another rate than the 16 fps written."""
    try:
        fps = float(json.loads((folder / "keypoints.json").read_text())["driving"]["fps"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a prepared folder with poses: nothing to say
    if abs(fps - C.SAMPLE_FPS) > 1e-3:
        log.info("the poses in %s are %.4g fps and the video is written at %d fps, so the motion plays at "
                 "%.2gx its real speed (as the official recipe); prepare with --target_fps %d for real speed",
                 folder, fps, C.SAMPLE_FPS, C.SAMPLE_FPS / fps, C.SAMPLE_FPS)


def default_save_file(args: argparse.Namespace) -> str:
    """The official output name (task, size, parallel degrees, prompt, time), with only letters,
    digits, ``-`` and ``_`` so that it needs no quoting in a shell (the official one keeps
    ``*`` and punctuation)."""
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    words = re.sub(r"[^0-9A-Za-z-]+", "_", args.prompt).strip("_")[:50].rstrip("_") or "video"
    size = args.size.replace("*", "x")
    return f"{args.task}_{size}_{args.ulysses_size}_{args.ring_size}_{words}_{stamp}.mp4"


def run(args: argparse.Namespace) -> int:
    from ..distributed.cli import is_torchrun, one_error_line

    if is_torchrun():  # several processes: sharding / sequence parallelism, rank 0 writes
        with one_error_line():  # the same bad flag would print one line per process
            return _run(args)
    return _run(args)


def fill_sampling_defaults(args: argparse.Namespace) -> None:
    """--sample_steps and --sample_shift as the official script fills them when not given."""
    if args.sample_steps is None:
        args.sample_steps = C.DEFAULT_STEPS
    if args.sample_shift is None:
        args.sample_shift = C.default_shift(args.size)


def sampling_options_from_args(args: argparse.Namespace, fill_defaults: bool = True):
    """The :class:`~steadydancer.options.SamplingOptions` of parsed generate flags, with the
    official defaults filled in (40 steps; shift 5.0, or 3.0 at 832*480 and 480*832); without
    ``fill_defaults`` ``args`` is left as it is (unset values read as those defaults)."""
    from ..options import SamplingOptions

    if fill_defaults:
        fill_sampling_defaults(args)
    steps = C.DEFAULT_STEPS if args.sample_steps is None else args.sample_steps
    shift = C.default_shift(args.size) if args.sample_shift is None else args.sample_shift
    sampling = SamplingOptions(solver=args.sample_solver, steps=steps, shift=shift,
                               guide_scale=args.sample_guide_scale,
                               condition_guide_scale=args.condition_guide_scale,
                               st_cond_cfg=args.st_cond_cfg, end_cond_cfg=args.end_cond_cfg,
                               timesteps=parse_sample_timesteps(args.sample_timesteps, args.sample_solver))
    if sampling.timesteps is not None:
        sampling.steps = len(sampling.timesteps)
    return sampling


def _run(args: argparse.Namespace) -> int:
    from ..api import generate_video

    args = resolve_args(args)
    sampling = sampling_options_from_args(args)
    from ..models.memory import memory_options_from_args

    memory = memory_options_from_args(args)
    from ..distributed.cli import is_torchrun, run_distributed

    if is_torchrun():  # the memory options are checked against what combines with several processes
        return run_distributed(args, sampling, memory, long_video_options_from_args(args))
    generate_video(ckpt_dir=args.ckpt_dir, image=args.image, cond_pos_folder=args.cond_pos_folder,
                   cond_neg_folder=args.cond_neg_folder, prompt=args.prompt, save_file=args.save_file,
                   size=args.size, frame_num=args.frame_num, sampling=sampling, seed=args.base_seed,
                   offload_model=args.offload_model, t5_cpu=args.t5_cpu, device=args.device, memory=memory,
                   long_video=long_video_options_from_args(args))
    add_audio_if_asked(args, args.save_file)
    print(f"saved {args.save_file}")
    return 0
