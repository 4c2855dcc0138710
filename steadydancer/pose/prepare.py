"""The pose stage end to end: detect once, align, augment, draw, and write the input folder.

The official recipe runs two scripts (``pose_align.py`` for the positive stream and
``pose_align_withdiffaug.py`` for the negative one), each running the detector on every frame,
then dumps their H.264 videos back to JPEG frames. Here the detector runs once per frame, its
poses are kept in ``keypoints.json`` (reused by the next run), and both streams are drawn from
the same keypoints straight to JPEG (no video round trip).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from ..errors import InputError
from ..fileio import atomic_dir, check_can_create
from ..progress import progress as progress_bar
from .align import align_pose, compute_alignment, reference_size
from .augment import augment_sequence
from .draw import draw_pose
from .keypoints import KeypointsFile, Pose, load_keypoints, save_keypoints
from .video import iter_video, resampled_source_index, video_fps, write_video

log = logging.getLogger(__name__)

KEYPOINTS_NAME = "keypoints.json"
DEFAULT_DETECT_RESOLUTION = 1024
# official default; it only sizes the official detector's own preview, which is not produced here
DEFAULT_IMAGE_RESOLUTION = 720
# x264 preset of the pose and preview videos: flat drawings compress well even when fast
VIDEO_PRESET = "veryfast"
# frame rate of the generated video (the official writer's), for the speed note
GENERATION_FPS = 16
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
            raise InputError(f"cannot read reference image {path}: not an image file") from None
    return np.ascontiguousarray(image[:, :, ::-1])


def check_max_frame(max_frame: int | None) -> None:
    """``--max_frame`` must be positive when given (None = every frame; the CLI's -1)."""
    if max_frame is not None and max_frame <= 0:
        raise InputError(f"--max_frame must be positive, or -1 for every frame; got {max_frame}")


def check_target_fps(target_fps: float | None) -> None:
    """``--target_fps`` must be a positive, finite frame rate when given."""
    if target_fps is not None and not (np.isfinite(target_fps) and target_fps > 0):
        raise InputError(f"--target_fps must be a positive frame rate (e.g. 16), got {target_fps}")


def pose_frames(poses: Iterable[Pose], height: int, width: int, all_people: bool = False,
                desc: str = "draw poses", progress: bool = True) -> Iterator[np.ndarray]:
    """The poses drawn one by one (RGB uint8 [height, width, 3]), with a progress bar."""
    for pose in progress_bar(poses, desc=desc, unit="frame", disable=not progress):
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
                  progress: bool = True, start: int = 0, target_fps: float | None = None,
                  allow_empty: bool = False) -> tuple[list[Pose], tuple[int, int] | None, float, bool]:
    """Poses of video frames ``start .. max_frame-1``, the frame (width, height), the fps, and
    whether the video ended before ``max_frame``.

    Frames before ``start`` are decoded but not detected. ``target_fps``: the video resampled to
    that rate (frames dropped or repeated, :func:`~steadydancer.pose.video.iter_video`); the
    frame indices and the fps returned are the resampled video's. ``allow_empty``: a video with
    no frames from ``start`` on is not an error (appending to a file that already reached the end).
    """
    if start < 0:
        raise InputError(f"--align_frame must be >= 0, got {start}")
    detect = _detect_fn(detector, detect_resolution, all_people)
    fps = float(target_fps) if target_fps else video_fps(video)
    frames: list[Pose] = []
    size = None
    total = _frame_count(video, max_frame, target_fps)
    total = None if total is None else max(total - start, 0)
    for frame in progress_bar(itertools.islice(iter_video(video, max_frame, target_fps), start, None),
                              total=total, desc="detect poses", unit="frame", disable=not progress):
        size = size or (frame.shape[1], frame.shape[0])
        frames.append(detect(frame))
    if not frames and not allow_empty:
        raise InputError(f"video {video} has no decodable frames"
                         + (f" from frame {start} on" if start else ""))
    missing = sum(not p.has_person() for p in frames)
    if missing:
        log.warning("nobody found in %d of %d driving frames (kept as missing points)", missing, len(frames))
    end = start + len(frames)
    reached_end = max_frame is None or end < max_frame or _frame_count(video, None, target_fps) == end
    return frames, size, fps, reached_end


def detect_reference(detector: Any, reference_rgb: np.ndarray, detect_resolution: int = DEFAULT_DETECT_RESOLUTION,
                     all_people: bool = False) -> Pose:
    """The reference image's pose, detected on the image resized as the official script does
    (bicubic, ~1024*576 area, multiples of 16); InputError when nobody is found."""
    ref_h0, ref_w0 = reference_rgb.shape[:2]
    ref_h, ref_w = reference_size(ref_h0, ref_w0)
    resized = cv2.resize(reference_rgb, (ref_w, ref_h), interpolation=cv2.INTER_CUBIC)
    reference = _detect_fn(detector, detect_resolution, all_people)(resized)
    if not reference.has_person():
        raise InputError("no person found in the reference image")
    return reference


def detect_keypoints(detector: Any, reference_rgb: np.ndarray, video: str | os.PathLike,
                     max_frame: int | None = None, detect_resolution: int = DEFAULT_DETECT_RESOLUTION,
                     all_people: bool = False, progress: bool = True,
                     target_fps: float | None = None) -> KeypointsFile:
    """Run the detector on the resized reference and on frames ``0 .. max_frame-1``.

    ``detector``: a :class:`steadydancer.pose.detect.Detector`, or a callable fake (see
    :func:`_detect_fn`). ``target_fps``: see :func:`detect_frames`. The returned file's
    ``source`` records the frames covered (``{"frames": {"count", "to_end"}}``).
    """
    reference = detect_reference(detector, reference_rgb, detect_resolution, all_people)
    frames, size, fps, to_end = detect_frames(detector, video, max_frame, detect_resolution, all_people,
                                              progress, target_fps=target_fps)
    return KeypointsFile((reference_rgb.shape[1], reference_rgb.shape[0]), reference, size, fps, frames,
                         source={"frames": {"count": len(frames), "to_end": to_end}})


def _frame_count(video: str | os.PathLike, max_frame: int | None, target_fps: float | None = None) -> int | None:
    """Frames the video holds by its header (resampled to ``target_fps``), capped at ``max_frame``."""
    import av

    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            count = stream.frames or None
            rate = float(stream.average_rate or 0)
    except Exception:
        return max_frame
    if count is None:
        return max_frame
    if target_fps and rate > 0:
        # output frame j shows source frame floor(j * rate / target_fps): valid while that is < count
        count = int(np.ceil((count - 1e-6) * target_fps / rate))
    return count if max_frame is None else min(count, max_frame)


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
    frames = iter_video(video, end, _target_fps(keypoints))
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


def _target_fps(keypoints: KeypointsFile) -> float | None:
    """The rate the keypoints' frames were resampled to (None: the video's own frames)."""
    return (keypoints.source or {}).get("target_fps")


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
    write_video(out / "all.mp4", progress_bar(previews, total=len(plan.positive), desc="encode all.mp4",
                                      unit="frame", disable=not progress), fps, preset=VIDEO_PRESET)


def _copy_reference(image: Path, dest: Path, reference_rgb: np.ndarray) -> None:
    if image.suffix.lower() == ".png":
        shutil.copyfile(image, dest)  # as the official recipe's cp
    else:
        from PIL import Image

        Image.fromarray(reference_rgb).save(dest)


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Name, size in bytes and SHA-256 of a file: what a keypoints file records of its inputs."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def detector_record(detector: Any, detector_args: dict[str, Any], detect_resolution: int,
                    all_people: bool) -> dict[str, Any]:
    """What the poses depend on besides the files: the detector (backend and weight files) and
    its settings. ``detector``: an already built detector or fake (recorded by its name), else
    None and ``detector_args`` are :func:`~steadydancer.pose.detect.make_detector`'s."""
    if detector is not None:
        name = getattr(detector, "name", None) or getattr(detector, "__name__", None) or type(detector).__name__
        record: dict[str, Any] = {"backend": str(name)}
    else:
        from .detect import resolve_backend

        backend, weights = resolve_backend(*(detector_args.get(key) for key in
                                             ("backend", "dwpose_onnx", "yolox_onnx", "dwpose_pth", "yolox_pth")))
        used = {"onnx": ("dwpose_onnx", "yolox_onnx"), "mmpose": ("dwpose_pth", "yolox_pth")}.get(backend, ())
        record = {"backend": backend}
        if used:
            record["weights"] = [{"name": weights[key].name, "bytes": weights[key].stat().st_size}
                                 for key in used if weights[key] is not None]
    record.update(detect_resolution=int(detect_resolution), all_people=bool(all_people))
    return record


# the parts of a keypoints file's source record that must match for its poses to be reused
_SOURCE_KEYS = {"image": "the reference image", "video": "the driving video",
                "detector": "the detector or its settings", "target_fps": "--target_fps"}


def _source_mismatch(recorded: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why a recorded source differs from the wanted one (None when it matches)."""
    for key, what in _SOURCE_KEYS.items():
        if recorded.get(key) != wanted.get(key):
            return f"{what} changed"
    return None


def load_or_detect(keypoints_path: Path, image: Path, reference_rgb: np.ndarray, video: Path,
                   max_frame: int | None, detect_resolution: int, all_people: bool, detector: Any,
                   detector_args: dict[str, Any], progress: bool = True,
                   target_fps: float | None = None, check_detector: bool = True,
                   existing: KeypointsFile | None = None) -> tuple[KeypointsFile, bool]:
    """The poses of ``image`` and of ``video``'s frames ``0 .. max_frame-1``, and whether
    ``keypoints_path`` already held exactly them (so that it need not be written again).

    The file is reused only when its source record matches: the same image and video
    contents (SHA-256), detector and settings, and ``target_fps``; otherwise everything is
    detected again (the log says why). When it matches but covers fewer frames than asked,
    only the missing frames are detected and appended. A file without a source record (made by
    another tool) is reused as it is, with a warning. ``detector``: a built detector or fake,
    else one is made from ``detector_args`` only if something needs detecting.
    ``check_detector`` False: a file the user named explicitly is reused whatever detector made
    it (the image, the video and ``target_fps`` must still match). ``existing``: the contents of
    ``keypoints_path`` when the caller has read them already (it may be extended in place).
    """
    first = _first_frame(video)  # a still image or an unreadable video stops here
    wanted = {"image": file_fingerprint(image), "video": file_fingerprint(video),
              "detector": detector_record(detector, detector_args, detect_resolution, all_people),
              "target_fps": None if target_fps is None else float(target_fps)}
    if existing is None and keypoints_path.is_file():
        existing = load_keypoints(keypoints_path)
    if existing is not None and existing.source is None:
        log.warning("%s has no record of what it was made from (another tool's file?): its poses are "
                    "used as they are; delete it to detect again", keypoints_path)
        if (existing.reference_size != (reference_rgb.shape[1], reference_rgb.shape[0])
                or existing.driving_size != (first.shape[1], first.shape[0]) or not existing.frames):
            raise InputError(f"{keypoints_path} does not fit {image} and {video} (made for a "
                             f"{existing.reference_size[0]}x{existing.reference_size[1]} reference and "
                             f"{len(existing.frames)} frames of "
                             f"{existing.driving_size[0]}x{existing.driving_size[1]}); delete it to detect again")
        return existing, True
    covered, extend_from = None, 0
    if existing is not None:
        why = _source_mismatch(existing.source, wanted if check_detector else
                               {**wanted, "detector": existing.source.get("detector")})
        covered = existing.source.get("frames", {})
        count = int(covered.get("count", len(existing.frames)))
        if why:
            log.info("detecting poses again: %s since %s was made", why, keypoints_path)
            existing = None
        elif covered.get("to_end") or (max_frame is not None and count >= max_frame):
            log.info("reusing the poses in %s (%d frames; same image, video%s)",
                     keypoints_path, count, " and detector" if check_detector else "")
            return existing, True
        else:
            extend_from = count
            log.info("%s covers frames 0-%d; detecting frames %d-%s", keypoints_path, count - 1, count,
                     "end" if max_frame is None else max_frame - 1)
    own = detector is None
    if own:
        from .detect import make_detector

        detector = make_detector(**detector_args)
    try:
        if existing is not None:
            frames, _, _, to_end = detect_frames(detector, video, max_frame, detect_resolution, all_people,
                                                 progress, start=extend_from, target_fps=target_fps,
                                                 allow_empty=True)
            keypoints = existing
            keypoints.frames = keypoints.frames[:extend_from] + frames
        else:
            keypoints = detect_keypoints(detector, reference_rgb, video, max_frame, detect_resolution,
                                         all_people, progress, target_fps=target_fps)
            to_end = keypoints.source["frames"]["to_end"]
    finally:
        if own and hasattr(detector, "close"):
            detector.close()
    if not check_detector and existing is not None:
        wanted["detector"] = existing.source.get("detector")  # the frames added are few; keep its record
    keypoints.source = {**wanted, "frames": {"count": len(keypoints.frames), "to_end": bool(to_end)}}
    return keypoints, False


PROMPT_NAME = "prompt.txt"


def _pair_ids_match(image: Path, video: Path) -> bool:
    """Whether image and video belong to one pair by their names (``images/00001.png`` with
    ``videos/00001/video.mp4`` or ``00001.mp4``), as in the official example layout."""
    return image.stem in (video.stem, video.parent.name)


def resolve_prompt(prompt: str | None, image: Path, video: Path, out_dir: Path,
                   same_reference: bool) -> tuple[str, str]:
    """The prompt for ``prompt.txt`` and where it came from (logged).

    In order: ``--prompt``; the ``prompt.txt`` already in ``out_dir`` when the reference image
    is unchanged (it may have been edited by hand); a ``prompt.txt`` or ``<image stem>.txt``
    beside the image; the ``prompt.txt`` beside the video, only when the image and video are
    one pair by name (the video's prompt describes its own dancer, not another reference).
    """
    if prompt is not None:
        return prompt, "--prompt"
    kept = out_dir / PROMPT_NAME
    if same_reference and kept.is_file() and kept.read_text(encoding="utf-8").strip():
        return kept.read_text(encoding="utf-8").strip(), f"{kept} (kept: same reference image)"
    for beside in (image.parent / PROMPT_NAME, image.with_suffix(".txt")):
        if beside.is_file():
            return beside.read_text(encoding="utf-8").strip(), str(beside)
    beside_video = video.parent / PROMPT_NAME
    if beside_video.is_file():
        if _pair_ids_match(image, video):
            return beside_video.read_text(encoding="utf-8").strip(), f"{beside_video} (same pair id as the image)"
        log.warning("%s describes the driving video's dancer, and %s is not from the same pair: not used. "
                    "prompt.txt is left empty; pass --prompt \"...\" describing the reference image",
                    beside_video, image.name)
        return "", "nowhere (cross pairing)"
    log.warning("no --prompt and no prompt.txt beside %s or %s: prompt.txt left empty "
                "(write the description of the reference image there before generating)", image, video)
    return "", "nowhere"


# what prepare writes into its folder: an existing --out may hold these and nothing else
PREPARED_ENTRIES = frozenset({"ref_image.png", "driving_video.mp4", PROMPT_NAME, KEYPOINTS_NAME,
                              "positive", "negative", "all.mp4", "provenance.json"})


def check_out_folder(out_dir: Path, flag: str = "--out") -> None:
    """InputError unless ``out_dir`` is new, empty, or an earlier prepared folder (which is replaced).

    Anything else in it would be lost when the folder is replaced, so it is refused.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{flag} {out_dir}: is a file; name a folder to write the inputs to")
    check_can_create(out_dir, flag)  # written beside its final place (or inside it: fileio.atomic_dir)
    if not out_dir.is_dir():
        return
    foreign = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in PREPARED_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{flag} {out_dir}: the folder holds files that prepare did not write ({shown}) and "
                         "would be replaced; give a new or empty folder, or an earlier prepare output")


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
    target_fps: float | None = None,
) -> Path:
    """Write the generation input folder ``out_dir`` and return its path.

    Contents: ref_image.png, driving_video.mp4, prompt.txt, positive/NNNN.jpg and
    positive/single.mp4 (aligned poses at twice the resized reference size), negative/NNNN.jpg
    and negative/single_aug.mp4 (the randomly re-shaped stream, from ``seed``), keypoints.json
    and all.mp4 (side-by-side preview), at the video's frame rate (or ``target_fps``), and
    provenance.json (the source-video frame each pose frame shows, see :func:`write_provenance`).
    The folder appears complete or not at all; an existing ``out_dir`` must be empty or an
    earlier prepared folder (anything else is refused, never replaced). Poses come from the
    ``keypoints.json`` already in ``out_dir`` when it was made from the same files, detector and
    settings (see :func:`load_or_detect`); otherwise ``detector`` (or one from ``make_detector``
    with ``backend`` and the weight paths) runs once on the reference and on each frame.
    ``image_resolution`` is accepted for the official command line; it has no effect here.
    ``max_frame`` counts video frames from the start (None = all); frames before
    ``align_frame`` are dropped after alignment, as in the official code. ``target_fps``:
    resample the video to this rate first (None: keep every frame, the official recipe).
    """
    del image_resolution  # sizes only the official detector's preview image
    image, video = Path(image), Path(video)
    out_dir = Path(os.path.abspath(out_dir))  # "." has no name to put a temporary folder beside
    check_max_frame(max_frame)
    check_target_fps(target_fps)
    if detect_resolution <= 0:
        raise InputError(f"--detect_resolution must be positive, got {detect_resolution}")
    check_out_folder(out_dir)
    reference_rgb = read_image(image)

    kp_path = out_dir / KEYPOINTS_NAME
    previous = load_keypoints(kp_path) if kp_path.is_file() else None
    previous_image = ((previous and previous.source) or {}).get("image")  # read before any update
    keypoints, unchanged = load_or_detect(
        kp_path, image, reference_rgb, video, max_frame, detect_resolution, all_people, detector,
        dict(backend=backend, dwpose_onnx=dwpose_onnx, yolox_onnx=yolox_onnx, dwpose_pth=dwpose_pth,
             yolox_pth=yolox_pth, device=device), progress, target_fps=target_fps, existing=previous)
    same_reference = previous_image is not None and previous_image == (keypoints.source or {}).get("image")
    prompt_text, prompt_from = resolve_prompt(prompt, image, video, out_dir, same_reference)
    log.info("prompt from %s: %s", prompt_from, _abbreviate(prompt_text) or "(empty)")
    plan = plan_poses(keypoints, align_frame, max_frame, seed, all_people)
    log.info("%d frames from frame %d at %.4g fps; reference resized to %dx%d, frames drawn at %dx%d",
             len(plan.positive), align_frame, keypoints.fps, plan.ref_width, plan.ref_height,
             2 * plan.ref_width, 2 * plan.ref_height)
    if abs(keypoints.fps - GENERATION_FPS) > 1e-3:
        log.info("the generated video plays at %d fps, so these %.4g fps poses move at %.2gx their real "
                 "speed (the official recipe); --target_fps %d resamples them to real speed",
                 GENERATION_FPS, keypoints.fps, GENERATION_FPS / keypoints.fps, GENERATION_FPS)

    with atomic_dir(out_dir) as tmp:
        if unchanged:
            shutil.copy2(kp_path, tmp / KEYPOINTS_NAME)
        else:
            save_keypoints(tmp / KEYPOINTS_NAME, keypoints)
        _copy_reference(image, tmp / "ref_image.png", reference_rgb)
        shutil.copyfile(video, tmp / "driving_video.mp4")
        (tmp / PROMPT_NAME).write_text(prompt_text + ("\n" if prompt_text else ""), encoding="utf-8")
        render_folder(tmp, plan, keypoints, reference_rgb, video, all_people, progress)
        write_provenance(tmp, video, len(plan.positive), align_frame, target_fps)
    return out_dir


PROVENANCE_NAME = "provenance.json"


def driving_frame_indices(count: int, align_frame: int, source_fps: float, target_fps: float | None) -> list[int]:
    """Source-video frame shown by each of the ``count`` pose frames (pose frame j is resampled frame
    ``align_frame + j``; without ``target_fps`` the resampled video is the video itself)."""
    if not target_fps:
        return [align_frame + j for j in range(count)]
    return [resampled_source_index(align_frame + j, source_fps, target_fps) for j in range(count)]


def write_provenance(folder: Path, video: Path, count: int, align_frame: int, target_fps: float | None) -> None:
    """``provenance.json`` in a prepared folder: which source-video frames its pose frames show, so that
    generation can pass them on to the video's sidecar and ``eval`` can pair each generated frame with
    the frame that drove it."""
    source_fps = video_fps(video)
    record = {"source_video": str(Path(video).absolute()),
              "frame_indices": driving_frame_indices(count, align_frame, source_fps, target_fps),
              "fps": source_fps, "target_fps": None if target_fps is None else float(target_fps)}
    (Path(folder) / PROVENANCE_NAME).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _abbreviate(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
