"""``steadydancer prepare``: reference image + driving video -> the generation input folder."""

from __future__ import annotations

import argparse

from ..pose.scripts import add_detector_arguments, weight_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, help="reference image (the first frame of the result)")
    parser.add_argument("--video", required=True, help="driving video")
    parser.add_argument("--out", required=True,
                        help="input folder to write (new, empty, or an earlier prepare output); its "
                             "keypoints.json is reused when made from the same files and detector")
    parser.add_argument("--prompt", default=None,
                        help="text prompt describing the reference image (default: the folder's prompt.txt "
                             "when the image is unchanged, else prompt.txt beside the image, else the "
                             "video's when image and video are one pair by name)")
    parser.add_argument("--align_frame", type=int, default=0,
                        help="driving frame the limb scales are measured on; earlier frames are dropped")
    parser.add_argument("--max_frame", type=int, default=300,
                        help="frames read from the start of the video (official default 300; -1: all)")
    parser.add_argument("--target_fps", type=float, default=None,
                        help="resample the video to this frame rate first (e.g. 16, the generated video's, "
                             "so motion plays at its real speed); default: every frame, as the official recipe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative-stream augmentation")
    add_detector_arguments(parser, official_defaults=False)


def run(args: argparse.Namespace) -> int:
    from ..pose.prepare import prepare_inputs

    detector_args = weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.backend, args.device)
    out = prepare_inputs(args.image, args.video, args.out, prompt=args.prompt,
                         align_frame=args.align_frame,
                         max_frame=None if args.max_frame == -1 else args.max_frame, target_fps=args.target_fps,
                         detect_resolution=args.detect_resolution,
                         image_resolution=args.image_resolution, seed=args.seed,
                         all_people=args.all_people, **detector_args)
    print(f"wrote {out}")
    return 0
