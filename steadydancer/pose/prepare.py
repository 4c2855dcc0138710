"""The pose stage end to end: detect once, align, augment, draw, and write the input folder.

The official recipe runs two scripts (``pose_align.py`` for the positive stream and
``pose_align_withdiffaug.py`` for the negative one), each running the detector on every frame,
then dumps their H.264 videos back to JPEG frames. Here the detector runs once per frame, its
poses are kept in ``keypoints.json`` (reused by the next run), and both streams are drawn from
the same keypoints straight to JPEG (no video round trip).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import InputError
from ..fileio import atomic_dir
from .align import align_pose, compute_alignment, reference_size
from .augment import augment_sequence
from .draw import draw_pose
from .keypoints import KeypointsFile, Pose, load_keypoints, save_keypoints
from .video import iter_video, video_fps, write_video

log = logging.getLogger(__name__)

KEYPOINTS_NAME = "keypoints.json"
DEFAULT_DETECT_RESOLUTION = 1024
# official default; it only sizes the official detector's own preview, which is not produced here
DEFAULT_IMAGE_RESOLUTION = 720
# x264 preset of the pose and preview videos: flat drawings compress well even when fast
VIDEO_PRESET = "veryfast"
# the official all.mp4 leaves out its last panel past this width (H.264 limit)
MAX_PREVIEW_WIDTH = 16384


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image as RGB uint8 [H, W, 3] (read by OpenCV as the official script does)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        try:  # formats OpenCV lacks (e.g. GIF)
            from PIL import Image

            with Image.open(path) as pil:
                return np.asarray(pil.convert("RGB"))
        except Exception:
            raise InputError(f"cannot read reference image {path} (not an image file?)") from None
    return np.ascontiguousarray(image[:, :, ::-1])


def check_max_frame(max_frame: int | None) -> None:
    """``--max_frame`` must be positive when given (None = every frame)."""
    if max_frame is not None and max_frame <= 0:
        raise InputError(f"--max_frame must be positive, got {max_frame}")


def pose_frames(poses: Iterable[Pose], height: int, width: int, all_people: bool = False,
                desc: str = "draw poses", progress: bool = True) -> Iterator[np.ndarray]:
    """The poses drawn one by one (RGB uint8 [height, width, 3]), with a progress bar."""
    for pose in tqdm(poses, desc=desc, unit="frame", disable=not progress):
        yield draw_pose(pose, height, width, all_people=all_people)


def _as_pose(detection: dict | Pose, where: str) -> Pose:
    return detection if isinstance(detection, Pose) else Pose.from_dict(detection, where)


@dataclass
class PosePlan:
    """What will be drawn: the aligned positive poses and the augmented negative ones."""

    reference: Pose
    positive: list[Pose]
    negative: list[Pose]
    factors: list[dict[str, float]]
    ref_height: int  # resized reference size, pixels
    ref_width: int
    first_frame: int  # video frame index of positive[0]


def plan_poses(keypoints: KeypointsFile, align_frame: int = 0, max_frame: int | None = None,
               seed: int | None = 0, all_people: bool = False) -> PosePlan:
    """Align the driving frames ``align_frame .. max_frame-1`` and make the negative stream.

    ``max_frame`` counts from the start of the video (the official meaning); None = all.
    ``all_people``: re-shape every person (else the first, as the official code).
    """
    ref_w0, ref_h0 = keypoints.reference_size
    ref_h, ref_w = reference_size(ref_h0, ref_w0)
    if not keypoints.reference.has_person():
        raise InputError("no person found in the reference image")
    end = len(keypoints.frames) if max_frame is None else min(max_frame, len(keypoints.frames))
    if align_frame < 0 or align_frame >= end:
        raise InputError(f"--align_frame {align_frame} is outside the {end} driving frames used "
                         "(video length, --max_frame)")
    driving = keypoints.frames[align_frame]
    if not driving.has_person():
        raise InputError(f"nobody found in driving frame {align_frame} (--align_frame); "
                         "choose a frame where the dancer is visible")
    drv_w, drv_h = keypoints.driving_size
    alignment = compute_alignment(keypoints.reference, driving, ref_w / ref_h, drv_w / drv_h)
    positive = []
    for pose in keypoints.frames[align_frame:end]:
        # a frame where nobody was found stays empty (drawn black)
        positive.append(align_pose(pose, alignment, all_people) if pose.has_person() else Pose.empty())
    negative, factors = augment_sequence(positive, seed)
    for i, pose in enumerate(positive):
        if not pose.has_person():
            negative[i] = Pose.empty()
    return PosePlan(keypoints.reference, positive, negative, factors, ref_h, ref_w, align_frame)


def _detect_fn(detector: Any, detect_resolution: int, all_people: bool) -> Callable[[np.ndarray], Pose]:
    """``image_rgb -> Pose`` for a Detector, or for a callable ``(image_rgb, detect_resolution,
    all_people) -> POSE dict`` (tests use such fakes)."""
    if callable(detector) and not hasattr(detector, "detect"):
        return lambda img: _as_pose(detector(img, detect_resolution, all_people), "detection")
    from .detect import detect_pose

    return lambda img: _as_pose(detect_pose(detector, img, detect_resolution, all_people=all_people),
                                "detection")


def detect_frames(detector: Any, video: str | os.PathLike, max_frame: int | None = None,
                  detect_resolution: int = DEFAULT_DETECT_RESOLUTION, all_people: bool = False,
                  progress: bool = True, start: int = 0) -> tuple[list[Pose], tuple[int, int], float]:
    """Poses of video frames ``start .. max_frame-1``, the frame (width, height) and the fps.

    Frames before ``start`` are decoded but not detected.
    """
    if start < 0:
        raise InputError(f"--align_frame must be >= 0, got {start}")
    detect = _detect_fn(detector, detect_resolution, all_people)
    fps = video_fps(video)
    frames: list[Pose] = []
    size = None
    total = _frame_count(video, max_frame)
    total = None if total is None else max(total - start, 0)
    for frame in tqdm(itertools.islice(iter_video(video, max_frame), start, None), total=total,
                      desc="detect poses", unit="frame", disable=not progress):
        size = size or (frame.shape[1], frame.shape[0])
        frames.append(detect(frame))
    if not frames:
        raise InputError(f"video {video} has no decodable frames"
                         + (f" from frame {start} (--align_frame) on" if start else ""))
    missing = sum(not p.has_person() for p in frames)
    if missing:
        log.warning("nobody found in %d of %d driving frames (kept as missing points)", missing, len(frames))
    return frames, size, fps


def detect_keypoints(detector: Any, reference_rgb: np.ndarray, video: str | os.PathLike,
                     max_frame: int | None = None, detect_resolution: int = DEFAULT_DETECT_RESOLUTION,
                     all_people: bool = False, progress: bool = True) -> KeypointsFile:
    """Run the detector on the resized reference and on frames ``0 .. max_frame-1``.

    ``detector``: a :class:`steadydancer.pose.detect.Detector`, or a callable fake (see
    :func:`_detect_fn`). The reference is resized first (bicubic, ~1024*576 area, multiples of
    16), as the official script does, and detected at that size.
    """
    ref_h0, ref_w0 = reference_rgb.shape[:2]
    ref_h, ref_w = reference_size(ref_h0, ref_w0)
    resized = cv2.resize(reference_rgb, (ref_w, ref_h), interpolation=cv2.INTER_CUBIC)
    reference = _detect_fn(detector, detect_resolution, all_people)(resized)
    if not reference.has_person():
        raise InputError("no person found in the reference image")
    frames, size, fps = detect_frames(detector, video, max_frame, detect_resolution, all_people, progress)
    return KeypointsFile((ref_w0, ref_h0), reference, size, fps, frames)


def _frame_count(video: str | os.PathLike, max_frame: int | None) -> int | None:
    import av

    try:
        with av.open(str(video)) as container:
            count = container.streams.video[0].frames or None
    except Exception:
        return max_frame
    if count is None:
        return max_frame
    return count if max_frame is None else min(count, max_frame)


def _check_reused(keypoints: KeypointsFile, path: Path, image: Path, image_size: tuple[int, int],
                  video: Path, frame_size: tuple[int, int]) -> None:
    hint = f"; delete {path} to detect again"
    if keypoints.reference_size != image_size:
        raise InputError(f"{path} was made for a {keypoints.reference_size[0]}x{keypoints.reference_size[1]} "
                         f"reference image, {image} is {image_size[0]}x{image_size[1]}{hint}")
    if keypoints.driving_size != frame_size:
        raise InputError(f"{path} was made for a {keypoints.driving_size[0]}x{keypoints.driving_size[1]} "
                         f"video, {video} is {frame_size[0]}x{frame_size[1]}{hint}")
    if not keypoints.frames:
        raise InputError(f"{path} has no driving frames{hint}")


def _first_frame(video: str | os.PathLike) -> np.ndarray:
    import av

    try:
        with av.open(str(video)) as container:
            if "image" in container.format.name or "pipe" in container.format.name:
                raise InputError(f"{video} is a still image ({container.format.name}), not a driving video")
    except av.FFmpegError:
        pass  # iter_video names the problem
    for frame in iter_video(video, 1):
        return frame
    raise InputError(f"video {video} has no decodable frames")


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    # OpenCV's JPEG writer with its defaults (quality 95), as the official frame dump
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")


def _preview_frames(plan: PosePlan, keypoints: KeypointsFile, reference_rgb: np.ndarray,
                    video: str | os.PathLike, all_people: bool,
                    with_negative: bool = True) -> Iterator[np.ndarray]:
    """all.mp4: reference | its pose | positive | negative | video frame | its raw pose."""
    height, width = plan.ref_height, plan.ref_width
    drv_w, drv_h = keypoints.driving_size
    video_width = int((height / drv_h * drv_w) // 2 * 2)
    ref_panel = cv2.resize(reference_rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    ref_pose = draw_pose(plan.reference, height, width, all_people=all_people)
    keep_raw = (3 + with_negative) * width + 2 * video_width <= MAX_PREVIEW_WIDTH
    end = plan.first_frame + len(plan.positive)
    frames = iter_video(video, end)
    for _ in range(plan.first_frame):
        next(frames, None)
    for i, (pos, neg) in enumerate(zip(plan.positive, plan.negative)):
        frame = next(frames, None)
        if frame is None:
            frame = np.zeros((drv_h, drv_w, 3), np.uint8)
        panels = [ref_panel, ref_pose, draw_pose(pos, height, width, all_people=all_people)]
        if with_negative:
            panels.append(draw_pose(neg, height, width, all_people=all_people))
        panels.append(cv2.resize(frame, (video_width, height), interpolation=cv2.INTER_CUBIC))
        if keep_raw:
            raw = keypoints.frames[plan.first_frame + i]
            panels.append(draw_pose(raw, height, video_width, all_people=all_people))
        yield np.concatenate(panels, axis=1)


def render_folder(out: Path, plan: PosePlan, keypoints: KeypointsFile, reference_rgb: np.ndarray,
                  video: str | os.PathLike, all_people: bool = False, progress: bool = True) -> None:
    """Draw both streams into ``out``/positive and ``out``/negative (JPEG + video) and all.mp4."""
    (out / "positive").mkdir(parents=True, exist_ok=True)
    (out / "negative").mkdir(parents=True, exist_ok=True)
    big_h, big_w = 2 * plan.ref_height, 2 * plan.ref_width
    fps = keypoints.fps

    def frames_of(poses: list[Pose], desc: str) -> Iterator[np.ndarray]:
        return pose_frames(poses, big_h, big_w, all_people, desc, progress)

    for name, poses in (("positive", plan.positive), ("negative", plan.negative)):
        for i, frame in enumerate(frames_of(poses, f"draw {name}")):
            _write_jpeg(out / name / f"{i:04d}.jpg", frame)
    # redrawing is cheaper than keeping every big frame in memory
    write_video(out / "positive" / "single.mp4", frames_of(plan.positive, "encode single.mp4"), fps,
                preset=VIDEO_PRESET)
    write_video(out / "negative" / "single_aug.mp4", frames_of(plan.negative, "encode single_aug.mp4"), fps,
                preset=VIDEO_PRESET)
    previews = _preview_frames(plan, keypoints, reference_rgb, video, all_people)
    write_video(out / "all.mp4", tqdm(previews, total=len(plan.positive), desc="encode all.mp4",
                                      unit="frame", disable=not progress), fps, preset=VIDEO_PRESET)


def _copy_reference(image: Path, dest: Path, reference_rgb: np.ndarray) -> None:
    if image.suffix.lower() == ".png":
        shutil.copyfile(image, dest)  # as the official recipe's cp
    else:
        from PIL import Image

        Image.fromarray(reference_rgb).save(dest)


def load_or_detect(keypoints_path: Path, image: Path, reference_rgb: np.ndarray, video: Path,
                   max_frame: int | None, detect_resolution: int, all_people: bool, detector: Any,
                   detector_args: dict[str, Any], progress: bool = True) -> tuple[KeypointsFile, bool]:
    """The keypoints in ``keypoints_path`` when that file exists (no detector is built), else a
    fresh detection (``detector``, or ``make_detector(**detector_args)``); and whether reused."""
    first = _first_frame(video)
    if keypoints_path.is_file():
        log.info("reusing %s (no detection)", keypoints_path)
        keypoints = load_keypoints(keypoints_path)
        _check_reused(keypoints, keypoints_path, image, (reference_rgb.shape[1], reference_rgb.shape[0]),
                      video, (first.shape[1], first.shape[0]))
        available = _frame_count(video, max_frame)
        if available and len(keypoints.frames) < available:
            log.warning("%s covers %d frames, the video has %d: using %d", keypoints_path,
                        len(keypoints.frames), available, len(keypoints.frames))
        return keypoints, True
    own = detector is None
    if own:
        from .detect import make_detector

        detector = make_detector(**detector_args)
    try:
        return detect_keypoints(detector, reference_rgb, video, max_frame, detect_resolution,
                                all_people, progress), False
    finally:
        if own and hasattr(detector, "close"):
            detector.close()


def _prompt_text(prompt: str | None, video: Path) -> str:
    if prompt is not None:
        return prompt
    beside = video.parent / "prompt.txt"
    if beside.is_file():
        return beside.read_text().strip()
    log.warning("no --prompt and no prompt.txt beside %s: prompt.txt left empty "
                "(write the description of the reference image there before generating)", video)
    return ""


def prepare_inputs(
    image: str | os.PathLike,
    video: str | os.PathLike,
    out_dir: str | os.PathLike,
    prompt: str | None = None,
    align_frame: int = 0,
    max_frame: int | None = None,
    detect_resolution: int = DEFAULT_DETECT_RESOLUTION,
    image_resolution: int = DEFAULT_IMAGE_RESOLUTION,
    seed: int | None = 0,
    backend: str = "auto",
    dwpose_onnx: str | os.PathLike | None = None,
    yolox_onnx: str | os.PathLike | None = None,
    dwpose_pth: str | os.PathLike | None = None,
    yolox_pth: str | os.PathLike | None = None,
    device: str = "cpu",
    all_people: bool = False,
    detector: Any = None,
    progress: bool = True,
) -> Path:
    """Write the generation input folder ``out_dir`` and return its path.

    Contents: ref_image.png, driving_video.mp4, prompt.txt, positive/NNNN.jpg and
    positive/single.mp4 (aligned poses at twice the resized reference size), negative/NNNN.jpg
    and negative/single_aug.mp4 (the randomly re-shaped stream, from ``seed``), keypoints.json
    and all.mp4 (side-by-side preview), with the video's frame rate.
    The folder appears complete or not at all. A ``keypoints.json`` already in ``out_dir`` is
    reused and no detector is built; otherwise ``detector`` (or one from ``make_detector`` with
    ``backend`` and the weight paths) runs once on the reference and on each frame.
    ``image_resolution`` is accepted for the official command line; it has no effect here.
    ``max_frame`` counts video frames from the start (None = all); frames before
    ``align_frame`` are dropped after alignment, as in the official code.
    """
    del image_resolution  # sizes only the official detector's preview image
    image, video, out_dir = Path(image), Path(video), Path(out_dir)
    check_max_frame(max_frame)
    if detect_resolution <= 0:
        raise InputError(f"--detect_resolution must be positive, got {detect_resolution}")
    reference_rgb = read_image(image)
    prompt_text = _prompt_text(prompt, video)

    kp_path = out_dir / KEYPOINTS_NAME
    keypoints, reused = load_or_detect(
        kp_path, image, reference_rgb, video, max_frame, detect_resolution, all_people, detector,
        dict(backend=backend, dwpose_onnx=dwpose_onnx, yolox_onnx=yolox_onnx, dwpose_pth=dwpose_pth,
             yolox_pth=yolox_pth, device=device), progress)
    plan = plan_poses(keypoints, align_frame, max_frame, seed, all_people)
    log.info("%d frames from frame %d at %.3g fps; reference resized to %dx%d, frames drawn at %dx%d",
             len(plan.positive), align_frame, keypoints.fps, plan.ref_width, plan.ref_height,
             2 * plan.ref_width, 2 * plan.ref_height)

    with atomic_dir(out_dir, keep=[KEYPOINTS_NAME] if reused else None) as tmp:
        if not reused:
            save_keypoints(tmp / KEYPOINTS_NAME, keypoints)
        _copy_reference(image, tmp / "ref_image.png", reference_rgb)
        shutil.copyfile(video, tmp / "driving_video.mp4")
        (tmp / "prompt.txt").write_text(prompt_text + ("\n" if prompt_text else ""))
        render_folder(tmp, plan, keypoints, reference_rgb, video, all_people, progress)
    return out_dir
