"""Pipeline pieces (sizes, mask, inputs) and a small end-to-end run on a tiny random checkpoint."""

from __future__ import annotations

import pytest
import torch

from steadydancer.errors import InputError
from steadydancer.pipeline import config as C
from steadydancer.pipeline.i2v import DancerPipeline, SamplingOptions, video_to_frames
from test_pipeline_support import tiny_checkpoint, write_inputs

from steadydancer.checks import check_frame_num
from steadydancer.pipeline.inputs import (first_frame_mask, latent_size, read_inputs,
                                          resolve_frame_num)


def test_latent_size_matches_official_formula():
    # 1024*576 area, portrait 9:16 reference -> 576x1024 pixels; 480p landscape
    assert latent_size(1024, 576, C.MAX_AREA_CONFIGS["1024*576"]) == (128, 72)
    # sqrt(399360 * 480/832) is 479.99999... in floating point, so the official formula gives 58, not 60
    assert latent_size(480, 832, C.MAX_AREA_CONFIGS["832*480"]) == (58, 104)
    # the demo reference (384x672): rounded down to even latent sizes
    assert latent_size(672, 384, C.MAX_AREA_CONFIGS["832*480"]) == (104, 58)


@pytest.mark.parametrize("frames", [1, 5, 17, 81])
def test_first_frame_mask_any_4n_plus_1(frames):
    mask = first_frame_mask(frames, 3, 5)
    assert mask.shape == (4, (frames - 1) // 4 + 1, 3, 5)
    assert mask[:, 0].eq(1).all() and mask[:, 1:].eq(0).all()


def test_first_frame_mask_equals_official_81():
    msk = torch.ones(1, 81, 2, 2)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, 2, 2).transpose(1, 2)[0]
    assert torch.equal(first_frame_mask(81, 2, 2), msk)


def test_frame_num_rules():
    for bad in (0, 4, 16, 80):
        with pytest.raises(InputError, match="4n\\+1"):
            check_frame_num(bad)
    assert resolve_frame_num(None, 48, 81, "p") == 45
    assert resolve_frame_num(None, 100, 81, "p") == 81
    with pytest.raises(InputError, match="found 10 pose frames.*needs 17"):
        resolve_frame_num(17, 10, 81, "p")


def test_output_frames_scaled_like_official():
    video = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 6, 1, 1).expand(3, 6, 1, 1)
    frames = video_to_frames(video)
    assert frames.shape == (6, 1, 1, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255, 255]


@pytest.fixture(scope="module")
def tiny_ckpt():
    return tiny_checkpoint()


def test_pipeline_small_area_runs_and_is_seeded(tiny_ckpt, tmp_path):
    folder = write_inputs(tmp_path / "in", 5)
    inputs = read_inputs(folder / "ref_image.png", folder / "positive", folder / "negative", "a dance", 5)
    assert inputs.positive[0].size == inputs.image.size == (40, 56)
    pipe = DancerPipeline(tiny_ckpt, device="cpu")
    options = SamplingOptions(solver="dpm++", steps=2, shift=3.0)
    run = lambda seed: pipe.generate(inputs.image, inputs.pose_first, inputs.positive, inputs.negative,
                                     "a dance", max_area=64 * 96, frame_num=5, sampling=options, seed=seed,
                                     progress=False)
    first = run(3)
    # area 64*96, 40x56 reference: lat_h = 92.7 // 8 // 2 * 2 = 10, lat_w = 66.2 // 8 // 2 * 2 = 8
    assert first.shape == (3, 5, 80, 64)
    assert first.abs().max() <= 1 and torch.isfinite(first).all()
    assert torch.equal(first, run(3))
    assert not torch.equal(first, run(4))


def test_configs_json_matches_code():
    import argparse
    import json
    from pathlib import Path

    from steadydancer.cli.generate import add_arguments

    ref = json.loads((Path(__file__).resolve().parents[1] / "configs" / "i2v-14B.json").read_text())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert ref["supported_sizes"] == list(C.SUPPORTED_SIZES) and ref["size"] == args.size == C.DEFAULT_SIZE
    assert ref["frame_num"] == C.DEFAULT_FRAME_NUM and ref["sample_steps"] == C.DEFAULT_STEPS
    assert ref["sample_shift"] == C.default_shift("1024*576") and ref["sample_shift_480p"] == C.default_shift("832*480")
    assert (ref["sample_guide_scale"], ref["condition_guide_scale"], ref["st_cond_cfg"], ref["end_cond_cfg"]) == (
        args.sample_guide_scale, args.condition_guide_scale, args.st_cond_cfg, args.end_cond_cfg)
    assert ref["sample_fps"] == C.SAMPLE_FPS and ref["sample_solver"] == args.sample_solver


def test_output_file_checked_before_generation(tmp_path):
    from steadydancer.pipeline.inputs import check_output_file

    check_output_file(tmp_path / "new" / "deeper" / "video.mp4")  # missing folders are created later
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match="cannot write in"):
        check_output_file(tmp_path / "plain" / "video.mp4")
