"""Windowed generation on the tiny checkpoint: what each window sees, the pose streams encoded once
(VAE frames counted), the chain handover and colour matching, the streamed decode, 69 frames with
33-frame windows in both modes (one process and Ulysses 2 on gloo), and the one-window path left
bit-identical."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from steadydancer.distributed.testing import run_on_gloo
from steadydancer.pipeline.i2v import DancerPipeline, SamplingOptions, video_to_frames
from steadydancer.pipeline.inputs import first_frame_mask, read_inputs
from steadydancer.pipeline.long_video import (LongVideoOptions, PoseFrames, chain_starts,
                                              chain_video_frames, chain_windows, color_match, crossfade,
                                              describe_plan, encode_frames_streamed, encode_pose_clip,
                                              generate_long_video_file, ignored_settings, known_frames_mask,
                                              lab_stats, plan_diagram, prepare_context_conditions,
                                              prepare_shared, sample_context)
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
    chain = LongVideoOptions(context_frames=33, mode="chain", chain_overlap=5)
    assert chain_windows(69, 33, 5) == [(0, 33), (28, 33), (56, 13)]  # the last window shortened
    assert "3 windows of 33 [0-32, 28-60, 56-68]" in describe_plan(69, chain)
    rows = plan_diagram(69, WINDOWS).splitlines()
    assert len(rows) == 4 and rows[1].startswith("w0  #") and rows[3].endswith("36-68")
    assert plan_diagram(69, chain).splitlines()[3].endswith("56-68")


def test_161_frames_plan_three_even_context_windows_and_chain_makes_exactly_161():
    context = describe_plan(161, LongVideoOptions())
    assert "161 frames in 3 windows of 81 [0-80, 40-120, 80-160]" in context  # overlaps 41 and 41 frames
    windows = chain_windows(161, 81, 5)
    assert windows == [(0, 81), (76, 81), (152, 9)]
    assert sum(n for _, n in windows) - 5 * (len(windows) - 1) == 161  # new frames: exactly those asked
    for frames, window, overlap in [(69, 33, 9), (321, 81, 9), (85, 81, 1), (161, 81, 77)]:
        spans = chain_windows(frames, window, overlap)
        assert spans[-1][0] + spans[-1][1] == frames and all(n % 4 == 1 and n > overlap for _, n in spans)
        assert all(s % 4 == 0 for s, _ in spans) and chain_starts(frames, window, overlap) == [s for s, _ in spans]


def test_flags_that_do_nothing_in_the_mode_are_named():
    assert ignored_settings(LongVideoOptions()) == []
    lines = ignored_settings(LongVideoOptions(color_match=0.5, chain_overlap=9))
    assert lines == ["--chain_overlap does nothing in context mode (it is a chain-mode setting)",
                     "--color_match does nothing in context mode (it is a chain-mode setting)"]
    chain = ignored_settings(LongVideoOptions(mode="chain", freenoise=False, schedule="uniform",
                                              context_overlap=8, context_image="every", fuse="pyramid"))
    assert [line.split()[0] for line in chain] == ["--context_overlap", "--context_schedule", "--context_fuse",
                                                   "--no_freenoise", "--context_image"]


def test_streamed_decode_equals_decode(ckpt):
    vae = DancerPipeline(ckpt, device="cpu").vae()
    latent = torch.randn(16, 4, 6, 5, generator=torch.Generator().manual_seed(0))
    chunks = list(vae.decode_stream(latent))
    assert [c.shape[1] for c in chunks] == [1, 4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=1), vae.decode(latent))


def test_new_settings_are_checked_with_one_line_and_parsed_from_the_flags():
    import argparse

    from steadydancer.checks import ARG_NAMES, check_long_video_options
    from steadydancer.cli.generate import add_long_video_arguments, long_video_options_from_args
    from steadydancer.errors import InputError

    bad = [(dict(mode="chain", chain_overlap=4), "--chain_overlap 4: frames handed over to the next window, 4n+1"),
           (dict(mode="chain", chain_overlap=33, context_frames=33), "less than the window (--context_frames 33)"),
           (dict(color_match=1.5), "--color_match 1.5: a strength, expected 0 to 1"),
           (dict(context_image="all"), "--context_image all: expected one of none, first, every"),
           (dict(chain_blend="mix"), "--chain_blend mix: expected one of drop, crossfade")]
    for settings, message in bad:
        with pytest.raises(InputError, match=re.escape(message)):
            check_long_video_options(LongVideoOptions(**settings))
    with pytest.raises(InputError, match="long_video.color_match"):
        check_long_video_options(LongVideoOptions(color_match=-1.0), ARG_NAMES)
    check_long_video_options(LongVideoOptions(context_frames=5, context_overlap=4, chain_overlap=5))  # not used here
    parser = argparse.ArgumentParser()
    add_long_video_arguments(parser)
    options = long_video_options_from_args(parser.parse_args(["--color_match", "--long_video", "chain",
                                                              "--chain_overlap", "9", "--chain_blend", "crossfade"]))
    assert (options.color_match, options.chain_overlap, options.chain_blend, options.mode) == (1.0, 9, "crossfade",
                                                                                              "chain")
    options = long_video_options_from_args(parser.parse_args(["--color_match", "0.25", "--context_image", "every"]))
    assert options.color_match == 0.25 and options.context_image == "every" and options == LongVideoOptions(
        color_match=0.25, context_image="every")


def _loaded(folder, frames):
    return read_inputs(folder / "ref_image.png", folder / "positive", folder / "negative", "p", frames)


def test_streamed_encode_equals_one_encode_of_the_whole_clip(ckpt, inputs69):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = _loaded(inputs69, 21)
    whole = encode_pose_clip(pipe, loaded.positive, 80, 64)
    assert torch.equal(encode_frames_streamed(pipe, loaded.positive, 80, 64), whole)


@pytest.mark.parametrize("context_image", ["first", "every", "none"])
def test_context_window_conditions_are_the_documented_ones(ckpt, inputs69, context_image):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = _loaded(inputs69, 69)
    positive = PoseFrames(inputs69 / "positive", 69, loaded.image.size)
    negative = PoseFrames(inputs69 / "negative", 69, loaded.image.size)
    assert all((np.asarray(a) == np.asarray(b)).all() for a, b in zip(positive[30:33], loaded.positive[30:33]))
    shared = prepare_shared(pipe, loaded.image, loaded.pose_first, "p", AREA, 69, 0, None)
    options = LongVideoOptions(context_frames=33, context_overlap=16, context_image=context_image)
    windows = prepare_context_conditions(pipe, shared, positive, negative, 69, SamplingOptions(steps=2), options)
    first, first_null, first_neg = windows.window(0)
    middle, _, middle_neg = windows.window(5)
    h, w = shared.h, shared.w
    # the reference as a known first frame: the I2V mask and (reference, zeros) -- a one-window run's y
    reference_y = torch.cat([first_frame_mask(33, shared.lat_h, shared.lat_w),
                             pipe.encode_video(torch.cat([shared.first, torch.zeros(3, 32, h, w)], dim=1))])
    unknown_y = torch.cat([torch.zeros(4, 9, shared.lat_h, shared.lat_w), pipe.encode_video(torch.zeros(3, 33, h, w))])
    expected = {"first": (reference_y, unknown_y), "every": (reference_y, reference_y),
                "none": (unknown_y, unknown_y)}[context_image]
    assert torch.equal(first.image_cond[0], expected[0]) and torch.equal(middle.image_cond[0], expected[1])
    # pose latents: the whole video's latent frames [5, 14), the first a one-frame encode of pixel frame 20
    whole_pos = encode_pose_clip(pipe, loaded.positive, h, w)
    whole_neg = encode_pose_clip(pipe, loaded.negative, h, w)
    assert torch.equal(first.pose_latents[0], whole_pos[:, :9]) and torch.equal(first_neg.pose_latents[0],
                                                                                 whole_neg[:, :9])
    assert torch.equal(middle.pose_latents[0, :, 1:], whole_pos[:, 6:14])
    assert torch.equal(middle_neg.pose_latents[0, :, 1:], whole_neg[:, 6:14])
    assert torch.equal(middle.pose_latents[0, :, :1], encode_pose_clip(pipe, loaded.positive[20:21], h, w))
    assert torch.equal(middle_neg.pose_latents[0, :, :1], encode_pose_clip(pipe, loaded.negative[20:21], h, w))
    assert not torch.equal(middle.pose_latents[0, :, :1], whole_pos[:, 5:6])  # a 4-frame latent is not used there
    # ref_x, ref_c, CLIP and text: the whole video's, in every window
    for name in ("ref_image", "ref_pose", "clip_image", "clip_pose", "text_context"):
        assert torch.equal(getattr(first, name), getattr(middle, name)), name
    assert torch.equal(first.ref_image[0], shared.ref_x) and torch.equal(first.ref_pose[0], shared.ref_c)
    assert torch.equal(first_null.text_context[0], shared.context_null)


def test_pose_streams_go_through_the_vae_about_once_for_161_frames_uniform_40_steps(ckpt, tmp_path):
    """Pixel frames through the VAE encoder, counted by a hook: <= 1.1x one whole-video encode per stream."""
    folder = write_inputs(tmp_path / "in", 161, pose_size=(40, 56))
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = _loaded(folder, 1)
    positive = PoseFrames(folder / "positive", 161, loaded.image.size)
    negative = PoseFrames(folder / "negative", 161, loaded.image.size)
    shared = prepare_shared(pipe, loaded.image, loaded.pose_first, "p", AREA, 161, 0, None)
    counted = []
    hook = pipe.vae().model.encoder.register_forward_hook(lambda module, args, out: counted.append(args[0].shape[2]))
    options = LongVideoOptions(schedule="uniform")  # 81-frame windows, overlap 16
    prepare_context_conditions(pipe, shared, positive, negative, 161, SamplingOptions(steps=40), options)
    hook.remove()
    starts = {a for step in range(40) for a in conditions_plan(options, 161)(step)}
    image_conditions = 2 * 81  # window 0's y (reference, zeros) and the all-zero clip, once each
    pose_frames = sum(counted) - image_conditions
    assert len(starts) > 10  # the schedule really moves (old code encoded 81 frames per distinct start)
    assert pose_frames / 2 <= 1.1 * 161, (pose_frames, sorted(starts))
    assert pose_frames == 2 * (161 + len(starts - {0}))


def conditions_plan(options, frames):
    from steadydancer.sampling.context_windows import window_plan

    return window_plan(options.schedule, (frames - 1) // 4 + 1, options.latent_window, options.latent_overlap)


def test_chain_handover_conditions_and_frames(ckpt, inputs69):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = _loaded(inputs69, 69)
    sampling = SamplingOptions(steps=2)
    options = LongVideoOptions(context_frames=33, mode="chain", chain_overlap=5)
    seen, decoded = {}, {}
    frames = list(chain_video_frames(pipe, loaded.image, loaded.pose_first, loaded.positive, loaded.negative, "p",
                                     AREA, 69, sampling, options, seed=4, progress=False,
                                     on_window=lambda k, start, c: seen.setdefault(k, (start, c)),
                                     on_decoded=lambda k, video: decoded.setdefault(k, video.clone())))
    assert len(frames) == 69 and frames[0].shape == (80, 64, 3)
    assert [seen[k][0] for k in range(3)] == [0, 28, 56] and seen[2][1][0].pose_latents.shape[2] == 4  # 13 frames
    whole_pos = encode_pose_clip(pipe, loaded.positive, 80, 64)
    for k, (start, (cond, _, neg)) in seen.items():
        known = 1 if k == 0 else 5
        lat_f = cond.image_cond.shape[2]
        assert torch.equal(cond.image_cond[0, :4], known_frames_mask(4 * (lat_f - 1) + 1, known, 10, 8))
        assert cond.image_cond[0, :4, :1 + (known - 1) // 4].eq(1).all() and cond.image_cond[0, :4, 2:].eq(0).all()
        assert torch.equal(cond.pose_latents[0, :, 1:], whole_pos[:, start // 4 + 1:start // 4 + lat_f])
        assert torch.equal(cond.ref_image, seen[0][1][0].ref_image)
    # the handed-over frames are the previous window's decoded frames: in the next window's condition ...
    handover = decoded[0][:, 28:33]
    y1 = torch.cat([handover, torch.zeros(3, 28, 80, 64)], dim=1)
    assert torch.equal(seen[1][1][0].image_cond[0, 4:], pipe.encode_video(y1))
    # ... and in the output, exactly (the next window's own copies are dropped)
    out = torch.from_numpy(np.stack(frames))
    for k, start in ((1, 28), (2, 56)):
        previous = video_to_frames(decoded[k - 1])
        assert torch.equal(out[start:start + 5], previous[start - seen[k - 1][0]:][:5])
    # window 0 is the one-window run of 33 frames with the same seed, up to the next window's start
    single = pipe.generate(loaded.image, loaded.pose_first, loaded.positive[:33], loaded.negative[:33], "p",
                           max_area=AREA, frame_num=33, sampling=sampling, seed=4, progress=False)
    assert torch.equal(out[:33], video_to_frames(single))


def test_color_match_leaves_the_first_window_alone(ckpt, inputs69):
    pipe = DancerPipeline(ckpt, device="cpu")
    loaded = _loaded(inputs69, 45)
    runs = {}
    for strength in (0.0, 1.0):
        options = LongVideoOptions(context_frames=33, mode="chain", chain_overlap=9, color_match=strength)
        runs[strength] = np.stack(list(chain_video_frames(pipe, loaded.image, loaded.pose_first, loaded.positive,
                                                          loaded.negative, "p", AREA, 45, SamplingOptions(steps=1),
                                                          options, seed=1, progress=False)))
    assert runs[0.0].shape == runs[1.0].shape == (45, 80, 64, 3)
    assert np.array_equal(runs[0.0][:33], runs[1.0][:33])  # frame 0 and the whole first window unchanged
    assert not np.array_equal(runs[0.0][33:], runs[1.0][33:])  # the later window was moved


def test_crossfade_and_color_match():
    a, b = torch.zeros(3, 3, 2, 2), torch.ones(3, 3, 2, 2)
    assert torch.allclose(crossfade(a, b)[:, :, 0, 0], torch.tensor([0.25, 0.5, 0.75]).expand(3, 3))
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 2, 8, 8, generator=g) * 1.6 - 0.8
    drifted = (reference.repeat(1, 3, 1, 1) * 0.5 + 0.3).clamp(-1, 1)  # tinted, lower contrast
    target = lab_stats(reference)
    matched = color_match(drifted, lab_stats(drifted[:, :2]), target)
    got = lab_stats(matched)
    assert abs(got[0] - target[0]).max() < 1.0 and abs(got[1] - target[1]).max() < 1.0
    assert abs(lab_stats(drifted)[0] - target[0]).max() > 5
    half = color_match(drifted, lab_stats(drifted[:, :2]), target, strength=0.5)
    torch.testing.assert_close(half, (drifted + matched) / 2)
    assert color_match(drifted, lab_stats(drifted), target, strength=0.0) is drifted


@pytest.mark.parametrize("mode", ["context", "chain"])
def test_69_frames_with_33_frame_windows_write_69_frames(ckpt, inputs69, tmp_path, mode):
    options = LongVideoOptions(context_frames=33, context_overlap=16, mode=mode,
                               color_match=0.5 if mode == "chain" else 0.0)
    out = generate_long_video_file(DancerPipeline(ckpt, device="cpu"), **_files(inputs69), prompt="p",
                                   save_file=tmp_path / "v.mp4", max_area=AREA, frame_num=69,
                                   sampling=SamplingOptions(steps=1), options=options, seed=0, progress=False)
    frames, fps = read_video(out)
    assert len(frames) == 69 and frames[0].shape == (80, 64, 3) and fps == 16
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_uniform_pyramid_lcm_context_run(ckpt, inputs69):
    options = LongVideoOptions(context_frames=9, context_overlap=4, schedule="uniform", fuse="pyramid")
    sampling = SamplingOptions(solver="lcm", steps=3, timesteps=(1000.0, 750.0, 500.0))
    loaded = _loaded(inputs69, 25)
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


# -- the documented distillation recipe ---------------------------------------------------------------

def test_the_documented_distillation_command_runs_as_written(ckpt, tmp_path, monkeypatch):
    """docs/long_video.md's recipe, flag for flag, with the tiny checkpoint and a tiny LoRA in place of
    the real files (and a small video area: the tiny model's size, not the recipe's)."""
    import shlex

    from safetensors.torch import save_file

    from conftest import REPO
    from steadydancer.cli.main import main
    from steadydancer.pipeline import run

    text = (REPO / "docs" / "long_video.md").read_text()
    block = text.split("<!-- test:distill-recipe -->", 1)[1].split("```")[1]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["steadydancer", "generate"] and "--lora" in argv
    lora = tmp_path / "distill_lora.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 64, generator=g),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(64, 4, generator=g)}, str(lora))
    files = {"--ckpt_dir": str(ckpt), "--input_dir": str(write_inputs(tmp_path / "in", 81, pose_size=(40, 56))),
             "--lora": str(lora), "--save_file": str(tmp_path / "distilled.mp4")}
    for i, arg in enumerate(argv[:-1]):
        if arg in files:
            argv[i + 1] = files.pop(arg)
    assert not files  # every file flag of the recipe was found
    monkeypatch.setattr(run, "max_area_for", lambda size: AREA)
    from steadydancer.models.dit import SteadyDancerDiT

    forward, calls = SteadyDancerDiT.forward, []
    monkeypatch.setattr(SteadyDancerDiT, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    assert main(argv[1:] + ["--device", "cpu"]) == 0  # argv[0] is the console command
    frames, fps = read_video(tmp_path / "distilled.mp4")
    assert len(frames) == 81 and fps == 16
    assert len(calls) == 4  # 4 steps of one DiT pass: no negative-text or negative-pose pass
