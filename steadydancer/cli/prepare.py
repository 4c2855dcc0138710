"""``steadydancer prepare``: reference image + driving video -> the generation input folder."""

from __future__ import annotations

import argparse

from ..pose.scripts import add_detector_arguments, weight_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="reference image (the first frame of the result)")
    parser.add_argument("--video", required=True, help="driving video")
    parser.add_argument("--out", required=True,
                        help="input folder to write; a keypoints.json already there is reused (no detection)")
    parser.add_argument("--prompt", default=None,
                        help="text prompt (default: prompt.txt beside the video, else empty)")
    parser.add_argument("--align_frame", "--align-frame", type=int, default=0,
                        help="driving frame the limb scales are measured on; earlier frames are dropped")
    parser.add_argument("--max_frame", "--max-frame", type=int, default=300,
                        help="frames read from the start of the video (official default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative-stream augmentation")
    add_detector_arguments(parser, official_defaults=False)


def run(args: argparse.Namespace) -> int:
    from ..pose.prepare import prepare_inputs

    detector_args = weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.backend, args.device)
    out = prepare_inputs(args.image, args.video, args.out, prompt=args.prompt,
                         align_frame=args.align_frame, max_frame=args.max_frame,
                         detect_resolution=args.detect_resolution,
                         image_resolution=args.image_resolution, seed=args.seed,
                         all_people=args.all_people, **detector_args)
    print(f"wrote {out}")
    return 0
