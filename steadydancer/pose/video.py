"""Video in and out through PyAV (FFmpeg): one reader and one writer for the whole toolkit."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np

from ..errors import InputError
from ..fileio import atomic_path


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    if not Path(path).is_file():
        raise InputError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise InputError(f"cannot read video {path}: {exc}") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream")
    return container


def video_fps(path: str | os.PathLike) -> float:
    """Average frame rate of the first video stream, frames per second."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        return float(rate)


def resampled_source_index(index: int, source_fps: float, target_fps: float) -> int:
    """Source frame shown at output frame ``index`` when a video is resampled to ``target_fps``.

    The frame on screen at the output frame's time ``index / target_fps``: frames are dropped
    when slowing the rate down and repeated when raising it, so motion keeps its real speed.
    """
    # the small epsilon keeps exact ratios (30 -> 15 fps) from flooring one frame short
    return int(np.floor(index * source_fps / target_fps + 1e-6))


def iter_video(path: str | os.PathLike, max_frames: int | None = None,
               target_fps: float | None = None) -> Iterator[np.ndarray]:
    """Yield decoded frames as RGB uint8 arrays [H, W, 3], in display order.

    ``target_fps``: resample to this frame rate (see :func:`resampled_source_index`); None
    keeps every frame. ``max_frames`` counts the frames yielded.
    """
    source_fps = video_fps(path) if target_fps else None
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0  # frames yielded
        decoded = 0
        try:
            for frame in container.decode(stream):
                if max_frames is not None and count >= max_frames:
                    return
                if source_fps is None:
                    yield frame.to_ndarray(format="rgb24")
                    count += 1
                else:
                    array = None
                    while (max_frames is None or count < max_frames) and \
                            resampled_source_index(count, source_fps, target_fps) == decoded:
                        array = frame.to_ndarray(format="rgb24") if array is None else array
                        yield array
                        count += 1
                decoded += 1
        except av.FFmpegError as exc:
            raise InputError(f"video {path} is damaged after frame {decoded}: {exc}") from None


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """All frames (RGB uint8 [H, W, 3]) and the frame rate; an empty video is an error."""
    fps = video_fps(path)
    frames = list(iter_video(path, max_frames))
    if not frames:
        raise InputError(f"video {path} has no decodable frames")
    return frames, fps


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float,
                crf: int = 17, preset: str | None = None) -> int:
    """Write RGB uint8 frames [H, W, 3] as H.264 (yuv420p) mp4; returns the frame count.

    Written to a temporary name and renamed at the end, so an interrupted write never leaves
    a file that looks complete. Odd widths or heights are padded by one pixel (yuv420p needs
    even sizes), replicating the last row or column. ``preset``: an x264 speed preset
    ("veryfast", ...; default: x264's own).
    """
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = None
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.uint8)
                if frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"expected RGB frames [H, W, 3], got {frame.shape}")
                pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"no frames to write to {path}")
            for packet in stream.encode():
                container.mux(packet)
    return count
