"""Windowed generation on the tiny checkpoint: what each window sees, the streamed decode, 69 frames
with 33-frame windows in both modes (one process and Ulysses 2 on gloo), and the one-window path
left bit-identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steadydancer.distributed.testing import run_on_gloo
from steadydancer.pipeline.i2v import DancerPipeline, SamplingOptions, video_to_frames
from steadydancer.pipeline.inputs import first_frame_mask, read_inputs
from steadydancer.pipeline.long_video import (ContextWindowConditions, LongVideoOptions, PoseFrames,
                                              chain_starts, chain_video_frames, color_match, crossfade,
                                              describe_plan, encode_pose_clip, generate_long_video_file,
                                              lab_stats, plan_diagram, prepare_shared, sample_context)
from steadydancer.pose.video import read_video
from test_pipeline_support import tiny_checkpoint, write_inputs

AREA = 64 * 96  # 40x56 reference -> 64x80 video, 8x10 latents
WINDOWS = LongVideoOptions(context_frames=33, context_overlap=16)


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def inputs69(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("lv") / "in", 69)


def _files(folder: Path) -> dict:
    return dict(image=folder / "ref_image.png", cond_pos_folder=folder / "positive",
                cond_neg_folder=folder / "negative")


def test_plan_log_line_and_diagram():
    assert describe_plan(69, WINDOWS).startswith("context windows: 69 frames in 3 windows of 33 [0-32, 20-52, 36-68]")
    chain = LongVideoOptions(context_frames=33, context_overlap=16, mode="chain")
    assert chain_starts(69, 33, 16) == [0, 17, 34, 36]
    assert "4 windows of 33 [0-32, 17-49, 34-66, 36-68]" in describe_plan(69, chain)
    rows = plan_diagram(69, WINDOWS).splitlines()
    assert len(rows) == 4 and rows[1].startswith("w0  #") and rows[3].endswith("36-68")


def test_streamed_decode_equals_decode(ckpt):
    vae = DancerPipeline(ckpt, device="cpu").vae()
    latent = torch.randn(16, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    chunks = list(vae.decode_stream(latent))
    assert [c.shape[1] for c in chunks] == [1, 4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=1), vae.decode(latent))


def test_context_window_conditions_are_the_documented_ones(ckpt, inputs69):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = read_inputs(inputs69 / "ref_image.png", inputs69 / "positive", inputs69 / "negative", "p", 69)
    positive = PoseFrames(inputs69 / "positive", 69, loaded.image.size)
    negative = PoseFrames(inputs69 / "negative", 69, loaded.image.size)
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(positive[30:33], loaded.positive[30:33]))
    shared = prepare_shared(pipe, loaded.image, loaded.pose_first, "p", AREA, 69, 0, None)
    windows = ContextWindowConditions(pipe, shared, positive, negative, 33)
    first, first_null, first_neg = windows.window(0)
    middle, _, middle_neg = windows.window(5)
    h, w = shared.h, shared.w
    # window 0: the I2V mask and (reference, zeros) -- exactly a one-window run's y
    assert torch.equal(first.image_cond[0, :4], first_frame_mask(33, shared.lat_h, shared.lat_w))
    y0 = pipe.encode_video(torch.cat([shared.first, torch.zeros(3, 32, h, w)], dim=1))
    assert torch.equal(first.image_cond[0, 4:], y0)
    # later windows: no known frame (zero mask, all-zero clip), not the reference again
    assert middle.image_cond[0, :4].eq(0).all()
    assert torch.equal(middle.image_cond[0, 4:], pipe.encode_video(torch.zeros(3, 33, h, w)))
    # pose latents: the window's own pixel frames 4a .. 4a + 32, encoded on their own
    assert torch.equal(middle.pose_latents[0], encode_pose_clip(pipe, loaded.positive[20:53], h, w))
    assert torch.equal(middle_neg.pose_latents[0], encode_pose_clip(pipe, loaded.negative[20:53], h, w))
    assert torch.equal(first.pose_latents[0], encode_pose_clip(pipe, loaded.positive[:33], h, w))
    # ref_x, ref_c, CLIP and text: the whole video's, in every window
    for name in ("ref_image", "ref_pose", "clip_image", "clip_pose", "text_context"):
        assert torch.equal(getattr(first, name), getattr(middle, name)), name
    assert torch.equal(first.ref_image[0], shared.ref_x) and torch.equal(first.ref_pose[0], shared.ref_c)
    assert torch.equal(first_null.text_context[0], shared.context_null)
    assert torch.equal(first_neg.pose_latents[0], encode_pose_clip(pipe, loaded.negative[:33], h, w))


def test_chain_windows_conditions_and_first_window_is_a_one_window_run(ckpt, inputs69):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = read_inputs(inputs69 / "ref_image.png", inputs69 / "positive", inputs69 / "negative", "p", 69)
    sampling = SamplingOptions(steps=2)
    options = LongVideoOptions(context_frames=33, context_overlap=16, mode="chain")
    seen = {}
    frames = list(chain_video_frames(pipe, loaded.image, loaded.pose_first, loaded.positive, loaded.negative, "p",
                                     AREA, 69, sampling, options, seed=4, progress=False,
                                     on_window=lambda k, start, c: seen.setdefault(k, (start, c))))
    assert len(frames) == 69 and frames[0].shape == (80, 64, 3)
    assert [seen[k][0] for k in range(4)] == [0, 17, 34, 36]
    for k, (start, (cond, _, neg)) in seen.items():
        assert torch.equal(cond.image_cond[0, :4], first_frame_mask(33, 10, 8))  # a known first frame
        assert torch.equal(cond.pose_latents[0], encode_pose_clip(pipe, loaded.positive[start:start + 33], 80, 64))
        assert torch.equal(neg.pose_latents[0], encode_pose_clip(pipe, loaded.negative[start:start + 33], 80, 64))
        assert torch.equal(cond.ref_image, seen[0][1][0].ref_image)
    assert not torch.equal(seen[1][1][0].image_cond[0, 4:], seen[0][1][0].image_cond[0, 4:])
    # window 0 is the one-window run of 33 frames with the same seed, up to the next window's start
    single = pipe.generate(loaded.image, loaded.pose_first, loaded.positive[:33], loaded.negative[:33], "p",
                           max_area=AREA, frame_num=33, sampling=sampling, seed=4, progress=False)
    assert torch.equal(torch.from_numpy(frames[16]), video_to_frames(single)[16])
    assert all(torch.equal(torch.from_numpy(frames[i]), video_to_frames(single)[i]) for i in range(17))


def test_crossfade_and_color_match():
    a, b = torch.zeros(3, 3, 2, 2), torch.ones(3, 3, 2, 2)
    assert torch.allclose(crossfade(a, b)[:, :, 0, 0], torch.tensor([0.25, 0.5, 0.75]).expand(3, 3))
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 1, 8, 8, generator=g) * 1.6 - 0.8
    drifted = (reference.repeat(1, 3, 1, 1) * 0.5 + 0.3).clamp(-1, 1)  # tinted, lower contrast
    matched = color_match(drifted, lab_stats(reference))
    target, got = lab_stats(reference), lab_stats(matched)
    assert abs(got[0] - target[0]).max() < 1.0 and abs(got[1] - target[1]).max() < 1.0
    assert abs(lab_stats(drifted)[0] - target[0]).max() > 5


@pytest.mark.parametrize("mode", ["context", "chain"])
def test_69_frames_with_33_frame_windows_write_69_frames(ckpt, inputs69, tmp_path, mode):
    options = LongVideoOptions(context_frames=33, context_overlap=16, mode=mode, color_match=mode == "chain")
    out = generate_long_video_file(DancerPipeline(ckpt, device="cpu"), **_files(inputs69), prompt="p",
                                   save_file=tmp_path / "v.mp4", max_area=AREA, frame_num=69,
                                   sampling=SamplingOptions(steps=1), options=options, seed=0, progress=False)
    frames, fps = read_video(out)
    assert len(frames) == 69 and frames[0].shape == (80, 64, 3) and fps == 16
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_uniform_pyramid_lcm_context_run(ckpt, inputs69):
    options = LongVideoOptions(context_frames=9, context_overlap=4, schedule="uniform", fuse="pyramid")
    sampling = SamplingOptions(solver="lcm", steps=3, timesteps=(1000.0, 750.0, 500.0))
    loaded = read_inputs(inputs69 / "ref_image.png", inputs69 / "positive", inputs69 / "negative", "p", 25)
    run = lambda seed: sample_context(DancerPipeline(ckpt, device="cpu"), loaded.image, loaded.pose_first,  # noqa: E731
                                      loaded.positive, loaded.negative, "p", AREA, 25, sampling, options,
                                      seed=seed, progress=False)
    latent = run(1)
    assert latent.shape == (16, 7, 10, 8) and torch.isfinite(latent).all()
    assert torch.equal(latent, run(1))


def test_up_to_context_frames_takes_the_one_window_path_unchanged(ckpt, tmp_path, monkeypatch):
    """generate_video with windows of >= frame_num frames gives the tensor of today's path (no long flags)."""
    from steadydancer.pipeline import long_video, run

    folder = write_inputs(tmp_path / "in", 5)
    videos = []

    def refuse(*args, **kwargs):
        raise AssertionError("windowed path taken")

    monkeypatch.setattr(long_video, "generate_long_video_file", refuse)
    monkeypatch.setattr(run, "max_area_for", lambda size: AREA)  # a small video (x264 output is not bit-stable)
    monkeypatch.setattr(run, "save_video", lambda video, save_file, started: videos.append(video))
    common = dict(ckpt_dir=ckpt, **_files(folder), prompt="p", frame_num=5, save_file=tmp_path / "v.mp4",
                  sampling=SamplingOptions(steps=2), seed=3, device="cpu", progress=False)
    run.generate_video(long_video=LongVideoOptions(context_frames=5, context_overlap=4), **common)
    run.generate_video(**common)
    assert videos[0].shape == (3, 5, 80, 64) and torch.equal(videos[0], videos[1])


# -- torchrun (Ulysses 2 on gloo) ---------------------------------------------------------------------

def _ulysses_worker(rank: int, world_size: int, ckpt: str, folder: str, out_dir: str) -> dict:
    """Every rank runs every window of both modes on the sequence-parallel DiT; rank 0 writes."""
    from steadydancer.distributed.launch import init_distributed
    from steadydancer.distributed.pipeline import generate_video_distributed
    from steadydancer.pipeline import run

    run.max_area_for = lambda size: AREA  # a 64x80 video keeps the test short (this process only)
    setup = init_distributed(ulysses_size=2)
    assert setup.sequence_parallel
    counts = {}
    for mode in ("context", "chain"):
        options = LongVideoOptions(context_frames=33, context_overlap=16, mode=mode)
        written = generate_video_distributed(setup, ckpt_dir=ckpt, **_files(Path(folder)), prompt="p",
                                             save_file=Path(out_dir) / f"{mode}.mp4", size="832*480", frame_num=69,
                                             sampling=SamplingOptions(steps=1), seed=2, progress=False,
                                             long_video=options)
        counts[mode] = len(read_video(written)[0]) if written is not None else None
    return counts


def test_windowed_runs_under_ulysses_2_write_69_frames(ckpt, inputs69, tmp_path):
    results = run_on_gloo(_ulysses_worker, 2, str(ckpt), str(inputs69), str(tmp_path))
    assert results[0] == {"context": 69, "chain": 69} and results[1] == {"context": None, "chain": None}
