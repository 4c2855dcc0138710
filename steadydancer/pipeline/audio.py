"""The driving video's sound in the generated video (PyAV).

Only meaningful when the poses were sampled at the output's frame rate (``--target_fps 16``): then
generated frame k is driving time ``start + k / 16`` s and the music stays on the beat. The sound is
re-encoded as AAC (the source may hold any codec mp4 accepts or not) and cut at the video's end;
the video stream is copied, not re-encoded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av

from ..errors import InputError
from ..fileio import atomic_path

log = logging.getLogger(__name__)


def has_audio(path: str | os.PathLike) -> bool:
    """Whether the media file holds a sound stream."""
    try:
        with av.open(str(path)) as container:
            return any(stream.type == "audio" for stream in container.streams)
    except (av.error.FFmpegError, OSError):
        return False


def add_audio(video_path: str | os.PathLike, source: str | os.PathLike, start_s: float = 0.0) -> bool:
    """Mux the sound of ``source`` from ``start_s`` seconds on into ``video_path`` (in place,
    atomically), cut at the video's duration. Returns False (file untouched) when ``source`` has no
    sound; InputError when it cannot be read."""
    video_path, source = Path(video_path), Path(source)
    try:
        src = av.open(str(source))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"--audio {source}: cannot read it ({exc})") from None
    with src:
        audio_in = next((s for s in src.streams if s.type == "audio"), None)
        if audio_in is None:
            return False
        with av.open(str(video_path)) as probe:
            stream = probe.streams.video[0]
            duration = float(stream.duration * stream.time_base) if stream.duration else float(probe.duration or 0) / 1e6
        rate = audio_in.codec_context.sample_rate or 44100
        with atomic_path(video_path) as tmp:
            with av.open(str(video_path)) as video_in, av.open(str(tmp), mode="w", format="mp4") as out:
                video_out = out.add_stream_from_template(video_in.streams.video[0])
                audio_out = out.add_stream("aac", rate=rate)
                audio_out.layout = "stereo"
                for packet in video_in.demux(video_in.streams.video[0]):
                    if packet.dts is None:
                        continue
                    packet.stream = video_out
                    out.mux(packet)
                resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
                if start_s > 0:
                    src.seek(int(start_s / audio_in.time_base), stream=audio_in, any_frame=False, backward=True)
                written = 0  # samples
                end = int(round(duration * rate))
                for frame in src.decode(audio_in):
                    if frame.time is not None and frame.time + frame.samples / frame.sample_rate <= start_s:
                        continue
                    for chunk in resampler.resample(frame):
                        if frame.time is not None and frame.time < start_s:  # the first frame straddles start
                            skip = int(round((start_s - frame.time) * rate))
                            if skip >= chunk.samples:
                                continue
                            array = chunk.to_ndarray()[:, skip:]
                            chunk = av.AudioFrame.from_ndarray(array.copy(order="C"), format="fltp", layout="stereo")
                            chunk.sample_rate = rate
                        keep = min(chunk.samples, end - written)
                        if keep <= 0:
                            break
                        if keep < chunk.samples:
                            array = chunk.to_ndarray()[:, :keep]
                            chunk = av.AudioFrame.from_ndarray(array.copy(order="C"), format="fltp", layout="stereo")
                            chunk.sample_rate = rate
                        chunk.pts = written
                        written += chunk.samples
                        for packet in audio_out.encode(chunk):
                            out.mux(packet)
                    if written >= end:
                        break
                for packet in audio_out.encode(None):
                    out.mux(packet)
    log.info("sound of %s from %.2f s added to %s", source, start_s, video_path)
    return True
