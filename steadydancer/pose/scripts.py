"""The official preprocessing command lines (``preprocess/*.py``), on our pose stage.

``pose_align.py`` / ``pose_align_withdiffaug.py`` keep their flags and outputs (``--outfn`` the
side-by-side video, ``--outfn_align_pose_video`` the positive pose video and, with the
augmentation, ``*_aug.mp4`` the negative one); the poses are detected once and kept in a
``keypoints.json`` beside ``--outfn_align_pose_video`` (or ``--keypoints``), which the next run,
e.g. the second script of the official recipe, reuses instead of detecting again.
``dump_video_images.py VIDEO FOLDER`` writes the frames as ``NNNN.jpg``; ``pose_extra.py`` draws
the raw (unaligned) poses of a video.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from ..progress import progress as progress_bar
from .draw import draw_pose
from .keypoints import save_keypoints
from .prepare import (DEFAULT_DETECT_RESOLUTION, DEFAULT_IMAGE_RESOLUTION, KEYPOINTS_NAME,
                      VIDEO_PRESET, _preview_frames, _write_jpeg, check_max_frame, detect_frames,
                      load_or_detect, plan_poses, pose_frames, read_image)
from .video import iter_video, write_video

log = logging.getLogger(__name__)

# Where the official README puts the DWPose weights: beside the preprocess/ scripts (as the
# official defaults are), not relative to the current folder.
OFFICIAL_WEIGHTS = Path(__file__).resolve().parents[2] / "preprocess" / "pretrained_weights" / "dwpose"
OFFICIAL_MAX_FRAME = 300
# the official raw-pose preview is painted at this height
RAW_PREVIEW_HEIGHT = 768


OFFICIAL_DEFAULT_CKPTS = {str(OFFICIAL_WEIGHTS / "yolox_l_8x8_300e_coco.pth"),
                          str(OFFICIAL_WEIGHTS / "dw-ll_ucoco_384.pth")}


def weight_args(dwpose_ckpt: str | None, yolox_ckpt: str | None, backend: str = "auto",
                device: str | None = None) -> dict[str, Any]:
    """``make_detector`` keyword arguments from the official checkpoint flags.

    Each path may be ``.onnx`` (onnxruntime backend) or ``.pth`` (mmpose backend). An official
    default location that holds no file is dropped, so that ``backend="auto"`` falls back to
    the bundled detector; any other path must exist.
    """
    args: dict[str, Any] = {"backend": backend, "device": device or _default_device()}
    for name, path in (("dwpose", dwpose_ckpt), ("yolox", yolox_ckpt)):
        if path is None:
            continue
        if str(path) in OFFICIAL_DEFAULT_CKPTS and not Path(path).is_file():
            log.info("no %s weights at %s; the detector backend decides", name, path)
            continue
        suffix = Path(path).suffix.lower()
        if suffix not in (".onnx", ".pth"):
            raise InputError(f"--{name}_ckpt: {path} should be a .onnx or .pth file")
        args[f"{name}_{suffix[1:]}"] = path
    return args


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def add_detector_arguments(parser: argparse.ArgumentParser, official_defaults: bool) -> None:
    """The official detection flags (weights, resolutions) plus --backend/--device/--all_people."""
    root = OFFICIAL_WEIGHTS if official_defaults else None
    parser.add_argument("--detect_resolution", type=int,
                        default=DEFAULT_DETECT_RESOLUTION, help="short side the detector sees (rounded to 64)")
    parser.add_argument("--image_resolution", type=int, default=DEFAULT_IMAGE_RESOLUTION,
                        help="accepted for the official command line (no effect here)")
    parser.add_argument("--yolox_config", default=None,
                        help="accepted for the official command line (the configs are built in)")
    parser.add_argument("--dwpose_config", default=None,
                        help="accepted for the official command line (the configs are built in)")
    parser.add_argument("--yolox_ckpt",
                        default=str(OFFICIAL_WEIGHTS / "yolox_l_8x8_300e_coco.pth") if root else None,
                        help="YOLOX-L weights: yolox_l.onnx or the mmdet .pth")
    parser.add_argument("--dwpose_ckpt",
                        default=str(OFFICIAL_WEIGHTS / "dw-ll_ucoco_384.pth") if root else None,
                        help="DWPose weights: dw-ll_ucoco_384.onnx or the mmpose .pth")
    parser.add_argument("--backend", default="auto", choices=["auto", "mediapipe", "onnx", "mmpose"],
                        help="pose detector (auto: the weights given, else the bundled mediapipe)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--all_people", action="store_true",
                        help="keep, align and draw every person (default: the most prominent only)")


def _frame_args(parser: argparse.ArgumentParser, max_frame_default: int | None) -> None:
    parser.add_argument("--align_frame", type=int, default=0,
                        help="driving frame the limb scales are measured on; earlier frames are dropped")
    parser.add_argument("--max_frame", type=int, default=max_frame_default,
                        help="frames read from the start of the video"
                             + (f" (default {max_frame_default})" if max_frame_default else " (default: all)"))


def _pose_align_parser(with_aug: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="detect, align and draw the driving poses on the reference"
                    + (" (positive and augmented negative streams)" if with_aug else ""))
    add_detector_arguments(parser, official_defaults=True)
    _frame_args(parser, OFFICIAL_MAX_FRAME)
    parser.add_argument("--imgfn_refer", default="./assets/images/0.jpg", help="reference image")
    parser.add_argument("--vidfn", default="./assets/videos/0.mp4", help="driving video")
    parser.add_argument("--outfn_align_pose_video", default=None, help="aligned pose video (single.mp4)")
    parser.add_argument("--outfn", default=None, help="side-by-side visualisation (all.mp4)")
    parser.add_argument("--keypoints", default=None,
                        help=f"keypoints file to reuse or write (default: {KEYPOINTS_NAME} beside "
                             "--outfn_align_pose_video)")
    if with_aug:
        parser.add_argument("--seed", type=int, default=None,
                            help="seed of the augmentation (default: random, as the official)")
    return parser


def run_pose_align(args: argparse.Namespace, with_aug: bool) -> int:
    """Write the official outputs of pose_align(.py|_withdiffaug.py) from parsed flags."""
    image, video = Path(args.imgfn_refer), Path(args.vidfn)
    img_name, video_name = image.name.split(".")[0], video.name.split(".")[0]
    single = Path(args.outfn_align_pose_video or f"./assets/poses/align/img_{img_name}_video_{video_name}.mp4")
    demo = Path(args.outfn or f"./assets/poses/align_demo/img_{img_name}_video_{video_name}.mp4")
    keypoints_path = Path(args.keypoints) if args.keypoints else single.parent / KEYPOINTS_NAME
    check_max_frame(args.max_frame)
    reference_rgb = read_image(image)
    detector_args = weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.backend, args.device)
    keypoints, unchanged = load_or_detect(keypoints_path, image, reference_rgb, video, args.max_frame,
                                          args.detect_resolution, args.all_people, None, detector_args,
                                          check_detector=not args.keypoints)
    if not unchanged:
        save_keypoints(keypoints_path, keypoints)
        log.info("poses saved to %s (reused by the next run)", keypoints_path)
    plan = plan_poses(keypoints, args.align_frame, args.max_frame, getattr(args, "seed", None), args.all_people)
    big = (2 * plan.ref_height, 2 * plan.ref_width)

    def drawn(poses, desc):
        return pose_frames(poses, *big, args.all_people, desc)

    write_video(single, drawn(plan.positive, f"write {single.name}"), keypoints.fps, preset=VIDEO_PRESET)
    if with_aug:
        aug = single.with_name(single.name[:-4] + "_aug" + ".mp4")
        write_video(aug, drawn(plan.negative, f"write {aug.name}"), keypoints.fps, preset=VIDEO_PRESET)
    previews = _preview_frames(plan, keypoints, reference_rgb, video, args.all_people, with_negative=with_aug)
    write_video(demo, progress_bar(previews, total=len(plan.positive), desc=f"write {demo.name}", unit="frame"),
                keypoints.fps, preset=VIDEO_PRESET)
    print(f"pose_list len: {len(plan.positive)}")
    print("pose align done")
    return 0


def pose_align_main(argv: list[str] | None = None, with_aug: bool = False) -> int:
    from ..cli.main import add_hyphen_aliases, guarded

    parser = _pose_align_parser(with_aug)
    add_hyphen_aliases(parser)
    args = parser.parse_args(argv)
    return guarded(run_pose_align, args, with_aug)


def dump_video_images(video: str | os.PathLike, folder: str | os.PathLike) -> int:
    """Every frame of ``video`` as ``folder/NNNN.jpg`` (OpenCV JPEG defaults); returns the count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, frame in enumerate(progress_bar(iter_video(video), desc="dump frames", unit="frame"), start=1):
        _write_jpeg(folder / f"{count - 1:04d}.jpg", frame)
    if count == 0:
        raise InputError(f"video {video} has no decodable frames")
    return count


def dump_video_images_main(argv: list[str] | None = None) -> int:
    from ..cli.main import guarded

    parser = argparse.ArgumentParser(description="write every frame of a video as NNNN.jpg")
    parser.add_argument("video_path")
    parser.add_argument("output_folder")
    args = parser.parse_args(argv)
    return guarded(lambda: print(f"saved {dump_video_images(args.video_path, args.output_folder)} frames "
                                 f"to {args.output_folder}") or 0)


def run_pose_extra(args: argparse.Namespace) -> int:
    """Raw (unaligned) poses of a video: ``--outfn_all`` (frame | pose) and ``--outfn_single``."""
    if not args.outfn_all or not args.outfn_single:
        raise InputError("--outfn_all and --outfn_single are required")
    check_max_frame(args.max_frame)
    from .detect import make_detector

    detector_args = weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.backend, args.device)
    with make_detector(**detector_args) as detector:
        # as the official script, frames before --align_frame are skipped, not detected
        poses, (width, height), fps, _ = detect_frames(detector, args.vidfn, args.max_frame,
                                                       args.detect_resolution, args.all_people,
                                                       start=args.align_frame)
    panel_w = int((RAW_PREVIEW_HEIGHT / height * width) // 2 * 2)

    def all_frames():
        video = iter_video(args.vidfn, args.max_frame)
        for _ in range(args.align_frame):
            next(video, None)
        for pose, frame in zip(progress_bar(poses, desc="write all", unit="frame"), video):
            frame = cv2.resize(frame, (panel_w, RAW_PREVIEW_HEIGHT), interpolation=cv2.INTER_CUBIC)
            yield np.concatenate([frame, draw_pose(pose, RAW_PREVIEW_HEIGHT, panel_w,
                                                   all_people=args.all_people)], axis=1)

    write_video(args.outfn_all, all_frames(), fps, preset=VIDEO_PRESET)
    write_video(args.outfn_single, pose_frames(poses, RAW_PREVIEW_HEIGHT, panel_w, args.all_people,
                                               "write single"), fps, preset=VIDEO_PRESET)
    print("pose align done")
    return 0


def pose_extra_main(argv: list[str] | None = None) -> int:
    from ..cli.main import add_hyphen_aliases, guarded

    parser = argparse.ArgumentParser(description="draw the raw (unaligned) poses of a video")
    add_detector_arguments(parser, official_defaults=True)
    _frame_args(parser, OFFICIAL_MAX_FRAME)
    parser.add_argument("--vidfn", default="./assets/videos/0.mp4", help="video")
    parser.add_argument("--outfn_all", default=None, help="video frame | pose, side by side")
    parser.add_argument("--outfn_single", default=None, help="pose only")
    add_hyphen_aliases(parser)
    args = parser.parse_args(argv)
    return guarded(run_pose_extra, args)


__all__ = ["weight_args", "add_detector_arguments", "run_pose_align", "pose_align_main",
           "dump_video_images", "dump_video_images_main", "run_pose_extra", "pose_extra_main"]
