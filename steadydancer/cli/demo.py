"""``steadydancer demo``: prepare + generate on the bundled sample (assets/demo/), offline.

Without --ckpt_dir a tiny random checkpoint is written to OUT/tiny_ckpt and small settings are
used (17 frames, the smallest official area, 4 steps): the video is noise, but every stage runs
in a few minutes on a CPU. With --ckpt_dir the official defaults apply.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InputError
from ..pipeline import config as C
from . import generate

log = logging.getLogger(__name__)

# settings of the tiny run (each flag given on the command line wins)
TINY_DEFAULTS = {"size": "832*480", "frame_num": 17, "sample_steps": 4}
# flags the demo fills itself from the bundled sample
_SAMPLE_FLAGS = ("image", "cond_pos_folder", "cond_neg_folder", "input_dir")


def demo_assets() -> Path:
    """assets/demo of the source tree (ref_image.png, driving_video.mp4, prompt.txt)."""
    folder = Path(__file__).resolve().parents[2] / "assets" / "demo"
    for name in ("ref_image.png", "driving_video.mp4", "prompt.txt"):
        if not (folder / name).is_file():
            raise InputError(f"bundled demo sample missing: {folder / name} (install from the source tree)")
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder: inputs/, tiny_ckpt/, demo.mp4")
    parser.add_argument("--pose_backend", default="auto", help="pose detector backend for the preparation")
    generate.add_arguments(parser)
    # None = "not given": filled from the tiny or the official defaults in run()
    parser.set_defaults(size=None)


def run(args: argparse.Namespace) -> int:
    from ..pose.prepare import prepare_inputs

    given = [f"--{name}" for name in _SAMPLE_FLAGS if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: the demo uses the bundled sample; use `steadydancer generate` "
                         "for your own inputs")
    out = Path(args.out)
    assets = demo_assets()
    prompt = (assets / "prompt.txt").read_text(encoding="utf-8").strip()

    tiny = args.ckpt_dir is None
    if tiny:
        for name, value in TINY_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    elif args.size is None:
        args.size = C.DEFAULT_SIZE
    generate.check_flags(args)  # a bad flag stops here, not after the preparation
    from ..pose.detect import resolve_backend

    resolve_backend(args.pose_backend, flag="--pose_backend")

    log.info("preparing the bundled sample into %s", out / "inputs")
    inputs = prepare_inputs(assets / "ref_image.png", assets / "driving_video.mp4", out / "inputs",
                            prompt=prompt, backend=args.pose_backend)
    if tiny:
        ckpt = out / "tiny_ckpt"
        if not (ckpt / C.DIT_CONFIG).is_file():
            from ..pipeline.tiny import write_tiny_checkpoint

            log.info("writing a tiny random checkpoint to %s", ckpt)
            write_tiny_checkpoint(ckpt, seed=0)
        args.ckpt_dir = str(ckpt)
    args.input_dir = str(inputs)
    if args.save_file is None:
        args.save_file = str(out / "demo.mp4")
    if args.base_seed < 0:
        args.base_seed = 0  # the demo is reproducible
    generate.run(args)
    print(f"inputs (poses, previews): {inputs}")
    if tiny:
        print(f"tiny random checkpoint: {args.ckpt_dir} (the video is noise; use --ckpt_dir SteadyDancer-14B)")
    print(f"video: {args.save_file}")
    return 0
