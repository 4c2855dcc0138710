"""``steadydancer calibrate-cache``: one uncached generation that measures MagCache's magnitude
ratios of this checkpoint and schedule, per guidance pass, and writes them for ``--cache_ratios``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

from ..errors import InputError
from . import generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """generate's flags (the run to measure: same size, frames, steps, solver, shift) and --out."""
    generate.add_arguments(parser)
    parser.add_argument("--out", required=True, metavar="RATIOS.json",
                        help="where to write the ratios (read back by generate --step_cache magcache --cache_ratios)")


def run(args: argparse.Namespace) -> int:
    from ..distributed.cli import is_torchrun
    from ..models.memory import memory_options_from_args
    from ..models.step_cache import take_calibration, write_cache_ratios
    from ..pipeline.run import generate_video

    if is_torchrun():
        raise InputError("calibrate-cache runs in one process (the ratios do not depend on the parallel layout)")
    if (getattr(args, "step_cache", "none") != "none" or args.cache_threshold is not None or args.cache_ratios
            or getattr(args, "cache_interval", None) is not None):
        raise InputError("calibrate-cache measures an uncached run: drop --step_cache, --cache_threshold, "
                         "--cache_ratios and --cache_interval")
    keep_video = args.save_file is not None
    with tempfile.TemporaryDirectory(prefix="steadydancer_calibrate_") as scratch:
        if not keep_video:
            args.save_file = os.path.join(scratch, "calibration.mp4")
        args = generate.resolve_args(args)
        sampling = generate.sampling_options_from_args(args)
        memory = dataclasses.replace(memory_options_from_args(args), step_cache="calibrate")
        generate_video(ckpt_dir=args.ckpt_dir, image=args.image, cond_pos_folder=args.cond_pos_folder,
                       cond_neg_folder=args.cond_neg_folder, prompt=args.prompt, save_file=args.save_file,
                       size=args.size, frame_num=args.frame_num, sampling=sampling, seed=args.base_seed,
                       offload_model=args.offload_model, t5_cpu=args.t5_cpu, device=args.device, memory=memory,
                       long_video=generate.long_video_options_from_args(args))
    ratios = take_calibration()
    if not ratios:
        raise InputError("calibrate-cache: the run measured no ratios (a long-video mode with several windows "
                         "per step? calibrate on a single-window run)")
    out = write_cache_ratios(Path(args.out), ratios, steps=sampling.steps, solver=sampling.solver,
                             shift=sampling.shift, size=args.size, frame_num=args.frame_num,
                             checkpoint=str(args.ckpt_dir))
    print(f"wrote {out} ({', '.join(f'{k}: {len(v)}' for k, v in ratios.items())} ratios)")
    return 0
