"""The Python API (steadydancer/api.py) on the tiny random checkpoint: frames, step callbacks,
output types, equality with the CLI's generate_video, long videos, the pose stage, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline_support import tiny_checkpoint, write_inputs

from steadydancer import SteadyDancerPipeline, export_to_video, prepare_pose
from steadydancer.api import PreparedInputs, augment_negative
from steadydancer.errors import InputError
from steadydancer.pipeline import config as C
from steadydancer.pipeline.i2v import DancerPipeline
from steadydancer.pipeline.long_video import LongVideoOptions
from steadydancer.pose.video import read_video

# a small pixel area keeps a 9-frame run under a second on a CPU; the 40x56 reference of
# write_inputs gives an 80x64 video (latent 10x8)
AREA = 64 * 96
SMALL = dict(size=AREA, num_inference_steps=3, seed=0, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("api") / "in", 9)


def test_nine_frames_and_one_callback_per_step(pipe, folder):
    seen = []

    def on_step(p, step, timestep, kwargs):
        assert p is pipe
        seen.append((step, timestep, tuple(kwargs["latents"].shape)))
        return {}

    out = pipe(folder / "ref_image.png", folder, prompt="a dance", num_frames=9, callback_on_step_end=on_step, **SMALL)
    video = out.frames[0]
    assert len(video) == 9 and all(isinstance(f, Image.Image) for f in video)
    assert video[0].size == (64, 80) and out.seed == 0 and out.fps == 16
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert all(shape == (1, 16, 3, 10, 8) for _, _, shape in seen)
    timesteps = [t for _, t, _ in seen]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] > 900


def test_callback_can_replace_the_latents(pipe, folder):
    plain = pipe(folder / "ref_image.png", folder, num_frames=5, output_type="latent", **SMALL).frames
    unchanged = pipe(folder / "ref_image.png", folder, num_frames=5, output_type="latent",
                     callback_on_step_end=lambda *a: {}, **SMALL).frames
    zeroed = pipe(folder / "ref_image.png", folder, num_frames=5, output_type="latent",
                  callback_on_step_end=lambda p, s, t, k: {"latents": torch.zeros_like(k["latents"])}
                  if s == 2 else {}, **SMALL).frames
    assert torch.equal(plain, unchanged)  # a callback that returns nothing changes no number
    assert zeroed.abs().max() == 0 and plain.abs().max() > 0


def test_output_types_and_shapes(pipe, folder):
    kwargs = dict(image=Image.open(folder / "ref_image.png"), pose_video=folder, num_frames=5, **SMALL)
    pil = pipe(**kwargs, output_type="pil").frames
    np_frames = pipe(**kwargs, output_type="np").frames
    pt = pipe(**kwargs, output_type="pt").frames
    latent = pipe(**kwargs, output_type="latent").frames
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (64, 80)
    assert np_frames.shape == (1, 5, 80, 64, 3) and np_frames.dtype == np.float32
    assert 0 <= np_frames.min() and np_frames.max() <= 1
    assert pt.shape == (1, 5, 3, 80, 64) and pt.dtype == torch.float32
    assert latent.shape == (1, 16, 2, 10, 8)
    assert np.array_equal(pt.permute(0, 1, 3, 4, 2).numpy(), np_frames)
    # pil frames are the official writer's uint8 (truncated, not rounded)
    assert np.array_equal(np.asarray(pil[0][3]), (np_frames[0, 3] * 255).astype(np.uint8))
    frames, fps = read_video(export_to_video(pil[0], folder.parent / "out.mp4"))
    assert len(frames) == 5 and fps == 16


def test_same_tensor_as_generate_video_for_the_same_seed(pipe, folder, tmp_path, monkeypatch):
    """The API with the frames of a prepared folder gives exactly the CLI path's video."""
    from steadydancer.pipeline.i2v import SamplingOptions
    from steadydancer.pipeline.run import generate_video

    monkeypatch.setitem(C.MAX_AREA_CONFIGS, "96*64", AREA)  # a test-only size name for generate_video
    produced = []
    original = DancerPipeline.generate

    def recording(self, *args, **kwargs):
        produced.append(original(self, *args, **kwargs))
        return produced[-1]

    monkeypatch.setattr(DancerPipeline, "generate", recording)
    sampling = SamplingOptions(steps=2, shift=3.0, condition_guide_scale=1.5)
    generate_video(ckpt_dir=tiny_checkpoint(), image=folder / "ref_image.png", cond_pos_folder=folder / "positive",
                   cond_neg_folder=folder / "negative", prompt="a person dances", save_file=tmp_path / "cli.mp4",
                   size="96*64", frame_num=5, sampling=sampling, seed=7, device="cpu", progress=False)
    frames = [Image.open(folder / "positive" / f"{i:04d}.jpg") for i in range(5)]
    negative = np.stack([np.asarray(Image.open(folder / "negative" / f"{i:04d}.jpg")) for i in range(5)])
    out = pipe(np.asarray(Image.open(folder / "ref_image.png")), frames, negative, prompt="a person dances",
               num_frames=5, size="96*64", num_inference_steps=2, shift=3.0, condition_guidance_scale=1.5,
               generator=torch.Generator().manual_seed(7), output_type="pt", progress=False)
    assert len(produced) == 2 and out.seed == 7
    cli, api = produced
    assert torch.equal(cli, api)
    assert torch.equal(out.frames, cli.clamp(-1, 1).add(1).div(2).permute(1, 0, 2, 3)[None])


def test_negative_stream_made_by_the_augmentation(pipe, folder):
    positive = [Image.open(folder / "positive" / f"{i:04d}.jpg") for i in range(5)]
    run = lambda seed: pipe(folder / "ref_image.png", positive, num_frames=5, augment_seed=seed,
                            output_type="latent", **SMALL).frames
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    # from a prepared folder the negative/ beside positive/ is used, as the CLI
    from_folder = pipe(folder / "ref_image.png", folder / "positive", prompt="a person dances", num_frames=5,
                       output_type="latent", **SMALL)
    prepared = PreparedInputs.from_folder(folder)
    assert torch.equal(from_folder.frames, pipe(prepared, num_frames=5, output_type="latent", **SMALL).frames)


def test_augmented_frame_keeps_the_neck_and_moves_the_joints_as_official():
    from steadydancer.pose.augment import augment_pose, find_neck
    from steadydancer.pose.draw import draw_pose
    from steadydancer.pose.keypoints import Pose

    candidate = np.array([[0.5, 0.2], [0.5, 0.3], [0.4, 0.3], [0.35, 0.45], [0.3, 0.6], [0.6, 0.3],
                          [0.65, 0.45], [0.7, 0.6], [0.45, 0.6], [0.45, 0.75], [0.45, 0.9], [0.55, 0.6],
                          [0.55, 0.75], [0.55, 0.9], [0.48, 0.18], [0.52, 0.18], [0.46, 0.2], [0.54, 0.2]])
    pose = Pose(candidate, np.arange(18, dtype=float)[None], np.zeros((2, 21, 2)), np.zeros((1, 68, 2)))
    frame = draw_pose(pose, 256, 192)
    neck = find_neck(frame)
    assert abs(neck[0] - 0.5 * 192) < 1.5 and abs(neck[1] - 0.3 * 256) < 1.5
    [negative] = augment_negative([Image.fromarray(frame)], seed=3)
    official, _ = augment_pose(pose, np.random.default_rng(3))
    drawn = draw_pose(official, 256, 192)
    # the warped drawing and the official redraw put the joints in the same places
    checked = 0
    for joint in (0, 3, 4, 6, 7, 9, 12):  # nose, elbows, wrists, knees (those left inside the frame)
        x, y = official.candidate[joint] * [192, 256]
        if 0 <= x < 192 and 0 <= y < 256:
            assert np.asarray(negative)[int(y), int(x)].max() > 60 and drawn[int(y), int(x)].max() > 60
            checked += 1
    assert checked >= 4
    assert not np.array_equal(np.asarray(negative), frame)
    assert find_neck(np.asarray(negative)) == pytest.approx(neck, abs=1.5)


def test_long_video_in_context_windows(pipe, folder, tmp_path):
    long_folder = write_inputs(tmp_path / "long", 13)
    seen = []
    out = pipe(long_folder / "ref_image.png", long_folder, num_frames=13, output_type="np",
               long_video=LongVideoOptions(context_frames=9, context_overlap=4),
               callback_on_step_end=lambda p, s, t, k: seen.append(tuple(k["latents"].shape)) or {}, **SMALL)
    assert out.frames.shape == (1, 13, 80, 64, 3)
    assert seen == [(1, 16, 4, 10, 8)] * 3  # the whole video's latent, once per step


def test_prepare_pose_feeds_the_pipeline(pipe, tmp_path):
    from steadydancer.cli.demo import demo_assets

    assets = demo_assets()
    prepared = prepare_pose(assets / "ref_image.png", assets / "driving_video.mp4", tmp_path / "prep",
                            prompt="a dancer", max_frame=5, progress=False)
    assert isinstance(prepared, PreparedInputs) and len(prepared) == len(prepared.negative) == 5
    assert prepared.prompt == "a dancer" and prepared.preview.is_file()
    assert prepared.positive[0].size == prepared.negative[0].size
    assert prepared.folder == tmp_path / "prep" and (prepared.folder / "keypoints.json").is_file()
    first = pipe(prepared, num_frames=5, output_type="latent", **SMALL).frames
    second = pipe(**prepared.as_kwargs(), num_frames=5, output_type="latent", **SMALL).frames
    assert torch.equal(first, second)


@pytest.mark.parametrize("change, words", [
    (dict(num_frames=8), "num_frames 8: must be 4n+1"),
    (dict(num_frames=13), "pose_video: 9 frames, num_frames 13"),
    (dict(image="missing.png"), "image: file not found"),
    (dict(pose_video="no/such/folder"), "pose_video: not found"),
    (dict(size="100*100"), "size 100*100: unsupported"),
    (dict(output_type="gif"), "output_type 'gif'"),
    (dict(solver="ddim"), "solver 'ddim'"),
    (dict(cfg_window=(0.5, 0.1)), "cfg_window"),
    (dict(cfg_window=(0.1, 1.5)), "cfg_window[1] 1.5: a fraction of the steps"),
    (dict(timesteps=[500, 900], solver="euler"), "timesteps 500,900: expected decreasing values"),
    (dict(long_video=LongVideoOptions(context_frames=8)), "long_video.context_frames 8: must be 4n+1"),
])
def test_bad_input_is_one_line_naming_the_argument_before_any_model_loads(folder, change, words):
    fresh = SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), device="cpu")
    kwargs = dict(image=folder / "ref_image.png", pose_video=folder, num_frames=9, **SMALL)
    kwargs.update(change)
    with pytest.raises(InputError) as info:
        fresh(**kwargs)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert fresh.pipeline._t5 is fresh.pipeline._dit is fresh.pipeline._vae is None


def test_from_pretrained_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match="ckpt_dir .*not found"):
        SteadyDancerPipeline.from_pretrained(tmp_path / "nothing")
    with pytest.raises(TypeError, match="blocks_on_gpus"):
        SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), blocks_on_gpus=2)


# -- every documented argument: type and range before any model loads ------------------------

WRONG_ARGUMENTS = [
    ("prompt", ["a", "b"]), ("negative_prompt", 5), ("num_frames", "9"), ("num_frames", 9.0),
    ("size", 5.5), ("size", None), ("num_inference_steps", 2.5), ("num_inference_steps", "2"),
    ("num_inference_steps", 0), ("guidance_scale", "abc"), ("guidance_scale", None),
    ("guidance_scale", float("nan")), ("condition_guidance_scale", "1"), ("cfg_window", 0.5),
    ("cfg_window", ("a", 0.4)), ("cfg_window", (0.1, 0.2, 0.3)), ("solver", 3), ("shift", "x"), ("shift", -1.0),
    ("timesteps", "1000"), ("timesteps", ["a"]), ("seed", "abc"), ("seed", 1.5), ("seed", 2**70),
    ("generator", 5), ("callback_on_step_end", 5), ("callback_on_step_end_tensor_inputs", "latents"),
    ("callback_on_step_end_tensor_inputs", ["noise"]), ("output_type", 5), ("return_dict", "yes"),
    ("long_video", {}), ("augment_seed", "x"), ("augment_seed", -3), ("progress", "yes"),
    ("image", 5), ("pose_video", 5), ("negative_pose_video", 5), ("image", None),
]


@pytest.mark.parametrize("name, value", WRONG_ARGUMENTS, ids=[f"{n}={v!r}" for n, v in WRONG_ARGUMENTS])
def test_every_argument_of_the_wrong_type_is_one_value_error_line(folder, name, value):
    fresh = SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), device="cpu")
    kwargs = dict(image=folder / "ref_image.png", pose_video=folder, num_frames=9, **SMALL)
    kwargs[name] = value
    with pytest.raises((ValueError, TypeError)) as info:
        fresh(**kwargs)
    message = str(info.value)
    assert message and "\n" not in message and name.split("[")[0] in message, message
    assert fresh.pipeline._t5 is fresh.pipeline._dit is fresh.pipeline._vae is fresh.pipeline._clip is None


def test_input_error_is_a_value_error_and_numpy_integers_are_numbers(folder):
    assert issubclass(InputError, ValueError)
    fresh = SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), device="cpu")
    # every number is accepted: the first error is the (later) missing image file
    with pytest.raises(InputError, match="image: file not found"):
        fresh("missing.png", folder, num_frames=np.int64(5), num_inference_steps=np.int32(2),
              seed=np.int64(7), guidance_scale=np.float32(4.0), size=np.int64(AREA), progress=False)


def test_from_pretrained_checks_device_and_dtype_at_once(tmp_path):
    ckpt = tiny_checkpoint()
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="^device cuda: no CUDA GPU is visible"):
            SteadyDancerPipeline.from_pretrained(ckpt, device="cuda")
    for device in ("tpu", 5):
        with pytest.raises(InputError, match="^device"):
            SteadyDancerPipeline.from_pretrained(ckpt, device=device)
    with pytest.raises(InputError, match=r"^dtype torch.int8: expected torch.bfloat16"):
        SteadyDancerPipeline.from_pretrained(ckpt, dtype=torch.int8)
    with pytest.raises(InputError, match="give one of them"):
        SteadyDancerPipeline.from_pretrained(ckpt, dtype=torch.float16, torch_dtype=torch.float32)
    with pytest.raises(InputError) as info:
        SteadyDancerPipeline.from_pretrained(ckpt, device="cpu", loras=[tmp_path / "none.safetensors"])
    assert str(info.value).startswith("loras ") and "--lora" not in str(info.value)
    pipe = SteadyDancerPipeline.from_pretrained(ckpt, device="cpu", torch_dtype=torch.float16)
    assert pipe.pipeline.dit_dtype == torch.float16


def test_diffusers_conveniences_before_any_model_loads(tmp_path):
    pipe = SteadyDancerPipeline.from_pretrained(tiny_checkpoint(), device="cpu", offload_model=False)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert pipe.to(torch.float16) is pipe and pipe.pipeline.dit_dtype == torch.float16
    with pytest.raises(InputError, match="^device"):
        pipe.to("gpu")
    pipe.enable_model_cpu_offload()
    assert pipe.pipeline.offload_model is True
    pipe.set_progress_bar_config(disable=True)
    assert set(pipe.components) == {"transformer", "vae", "text_encoder", "image_encoder"}
    assert all(model is None for model in pipe.components.values())  # nothing loaded yet


def test_output_is_a_diffusers_base_output(pipe, folder, tmp_path):
    from diffusers.utils import BaseOutput

    out = pipe(folder / "ref_image.png", folder, num_frames=5, output_type="latent", **SMALL)
    assert isinstance(out, BaseOutput)
    assert out[0] is out.frames and out["frames"] is out.frames and out.to_tuple() == (out.frames, 0, 16)
    frames, seed, fps = pipe(folder / "ref_image.png", folder, num_frames=5, output_type="latent",
                             return_dict=False, **SMALL)
    assert torch.equal(frames, out.frames) and seed == 0 and fps == 16
    # diffusers' keyword for the file; fps checked
    written = export_to_video([Image.new("RGB", (32, 32))] * 3, output_video_path=tmp_path / "v.mp4")
    assert written == tmp_path / "v.mp4" and read_video(written)[1] == 16
    with pytest.raises(InputError, match="fps 0"):
        export_to_video([Image.new("RGB", (32, 32))], tmp_path / "w.mp4", fps=0)


def test_a_random_seed_is_below_2_53():
    from steadydancer.options import draw_seed

    assert all(0 <= draw_seed() < 2**53 for _ in range(1000))


def test_one_set_of_defaults_for_cli_api_and_ui():
    import argparse
    import inspect

    from steadydancer.cli.generate import add_arguments
    from steadydancer.options import SamplingOptions

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cli = parser.parse_args([])
    api = inspect.signature(SteadyDancerPipeline.__call__).parameters
    official = SamplingOptions()
    assert cli.size == api["size"].default == C.DEFAULT_SIZE == "1280*720"
    assert cli.condition_guide_scale == api["condition_guidance_scale"].default == official.condition_guide_scale == 1.5
    assert cli.sample_guide_scale == api["guidance_scale"].default == official.guide_scale == 5.0
    assert (cli.st_cond_cfg, cli.end_cond_cfg) == api["cfg_window"].default == (0.1, 0.4)
    assert api["num_inference_steps"].default == official.steps == C.DEFAULT_STEPS == 40
    assert cli.sample_solver == api["solver"].default == "unipc"
    try:
        from steadydancer.ui.app import DEFAULTS
    except ImportError:  # gradio not installed
        return
    assert (DEFAULTS["size"], DEFAULTS["condition_guidance_scale"], DEFAULTS["guidance_scale"],
            DEFAULTS["steps"], DEFAULTS["cfg_start"], DEFAULTS["cfg_end"]) == ("1280*720", 1.5, 5.0, 40, 0.1, 0.4)


PREPARE_WRONG = [("video", 5), ("out_dir", 3.5), ("prompt", ["a"]), ("align_frame", -1), ("align_frame", 1.5),
                 ("max_frame", 0), ("max_frame", "300"), ("target_fps", "16"), ("target_fps", 0), ("seed", "x"),
                 ("backend", 3), ("detect_resolution", 10), ("device", None), ("all_people", "yes"),
                 ("progress", 1)]


@pytest.mark.parametrize("name, value", PREPARE_WRONG, ids=[f"{n}={v!r}" for n, v in PREPARE_WRONG])
def test_prepare_pose_arguments_of_the_wrong_type_are_one_line(tmp_path, name, value):
    from steadydancer.cli.demo import demo_assets

    assets = demo_assets()
    kwargs = dict(image=assets / "ref_image.png", video=assets / "driving_video.mp4", out_dir=tmp_path / "p")
    kwargs[name] = value
    with pytest.raises(ValueError) as info:
        prepare_pose(**kwargs)
    assert str(info.value).startswith(name) and "\n" not in str(info.value)
    assert not (tmp_path / "p").exists()  # refused before any work
