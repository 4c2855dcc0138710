"""Frames per second of detect_pose on a video: ``python -m steadydancer.pose.detect.bench VIDEO``."""

from __future__ import annotations

import argparse
import time

from steadydancer.pose.video import iter_video

from steadydancer.errors import InputError

from .api import count_people, detect_pose, make_detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video")
    parser.add_argument("--frames", type=int, default=30, help="frames to time (after one warm-up frame)")
    parser.add_argument("--detect-resolution", type=int, default=1024)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dwpose_ckpt", help="DWPose weights: .onnx or the mmpose .pth")
    parser.add_argument("--yolox_ckpt", help="YOLOX-L weights: .onnx or the mmdet .pth")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from steadydancer.cli.main import guarded

    return guarded(_run, args)


def _run(args: argparse.Namespace) -> int:
    from steadydancer.pose.scripts import weight_args

    if args.frames <= 0:
        raise InputError(f"--frames must be positive, got {args.frames}")
    frames = list(iter_video(args.video, max_frames=args.frames + 1))
    if len(frames) < 2:
        raise InputError(f"{args.video} has {len(frames)} frames; timing needs at least 2")
    detector_args = weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.backend, args.device)
    with make_detector(**detector_args) as detector:
        detect_pose(detector, frames[0], args.detect_resolution)  # warm-up
        found = 0
        start = time.perf_counter()
        for frame in frames[1:]:
            found += count_people(detect_pose(detector, frame, args.detect_resolution)) > 0
        elapsed = time.perf_counter() - start
    timed = len(frames) - 1
    print(
        f"backend={detector.name} frames={timed} size={frames[0].shape[1]}x{frames[0].shape[0]} "
        f"detect_resolution={args.detect_resolution}: {timed / elapsed:.2f} frames/s "
        f"({1000 * elapsed / timed:.0f} ms/frame), person found in {found}/{timed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
