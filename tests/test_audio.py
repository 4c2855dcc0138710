"""The driving video's sound in the output: pipeline/audio.py (PyAV), ``generate --audio`` and its
one-line refusals. The bundled sample 00001 of ../shared/samples has AAC sound; a tone is made
here when it is absent."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from steadydancer.cli.main import main
from steadydancer.pipeline.audio import add_audio, has_audio
from steadydancer.pose.video import read_video, write_video
from test_pipeline_support import tiny_checkpoint, write_inputs


def _tone_video(path: Path, seconds: float = 3.0, rate: int = 44100) -> Path:
    """A 16 fps grey video with a 440 Hz tone (AAC), for the sound to come from."""
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=16)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(int(seconds * 16)):
            for packet in video.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")):
                out.mux(packet)
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)
    return path


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    return _tone_video(tmp_path_factory.mktemp("audio") / "tone.mp4")


def _durations(path: Path) -> dict[str, float]:
    with av.open(str(path)) as container:
        return {s.type: float(s.duration * s.time_base) for s in container.streams if s.duration}


def test_sound_is_added_cut_at_the_video_end_and_the_frames_are_untouched(tone, tmp_path):
    video = tmp_path / "v.mp4"
    frames = [np.full((48, 32, 3), 10 * i, np.uint8) for i in range(17)]
    write_video(video, frames, fps=16)
    before = read_video(video)[0]
    assert not has_audio(video)
    assert add_audio(video, tone, start_s=1.0)
    assert has_audio(video)
    lengths = _durations(video)
    assert abs(lengths["audio"] - 17 / 16) < 0.05 and abs(lengths["video"] - 17 / 16) < 1e-6
    after, fps = read_video(video)
    assert fps == 16 and len(after) == 17
    np.testing.assert_array_equal(np.stack(after), np.stack(before))  # the video stream was copied
    silent = tmp_path / "silent.mp4"
    write_video(silent, frames, fps=16)
    assert add_audio(video, silent) is False  # no sound in the source: nothing changes


def test_generate_audio_flag(tmp_path, tone, monkeypatch, capsys):
    import steadydancer.api as api

    ckpt = tiny_checkpoint()
    write_inputs(tmp_path / "in", 5, ref_size=(40, 56), pose_size=(40, 56))
    out = tmp_path / "out.mp4"

    def fake_generate_video(**kwargs):  # the generation itself is tested elsewhere
        write_video(kwargs["save_file"], [np.zeros((48, 32, 3), np.uint8)] * 5, fps=16)
        return Path(kwargs["save_file"])

    monkeypatch.setattr(api, "generate_video", fake_generate_video)
    argv = ["generate", "--ckpt_dir", str(ckpt), "--input_dir", str(tmp_path / "in"), "--frame_num", "5",
            "--device", "cpu", "--prompt", "dance", "--save_file", str(out)]
    assert main(argv + ["--audio", str(tone), "--audio_start", "0.5"]) == 0
    assert has_audio(out) and len(read_video(out)[0]) == 5
    for flags, words in ((["--audio", str(tmp_path / "none.mp4")], "--audio"),
                         (["--audio", str(out.with_name("x.mp4"))], "file not found"),
                         (["--audio", str(tone), "--audio_start", "-1"], "--audio_start -1: must be 0 or more")):
        capsys.readouterr()
        assert main(argv + flags) != 0
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    silent = tmp_path / "silent.mp4"
    write_video(silent, [np.zeros((16, 16, 3), np.uint8)] * 3, fps=16)
    assert main(argv + ["--audio", str(silent)]) != 0
    assert "no sound stream" in capsys.readouterr().err
